// engine/connection-limits: the per-address cap on a plain Node HTTP server, with raw sockets from several
// loopback addresses (each 127.x.y.z is another client). The account page uses it (test/accounts); here what
// that does not show: the limit is read at each accept (a reload changes it for the next connection), and "over the cap" is reported once per
// episode — again only after the address came back under.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { capConnectionsPerAddress } from '../../engine/connection-limits/per-address-cap.ts';
import { assertPerAddressCap, getFrom, rawHttp } from '../helpers/http-per-address.ts';
import { until } from '../helpers/wait.ts';

let limit = 2;
const reports: Array<[string, number]> = [];
const server = http.createServer((_, res) => res.end('ok'));
capConnectionsPerAddress(server, { limit: () => limit, refused: (address, l) => reports.push([address, l]) });
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const port = (server.address() as AddressInfo).port;
after(() => { server.closeAllConnections(); server.close(); });

test('one address over the cap is closed at once, unanswered; others are answered; a freed slot is its own again', async () => {
  await assertPerAddressCap(port, { limit: 2, address: '127.0.3.1', other: '127.0.3.2', path: '/' });
  assert.deepEqual(reports, [['127.0.3.1', 2]]);
});

test('the limit is read at each accept, and an episode over it is reported once, then again after coming back under', async () => {
  reports.length = 0;
  limit = 3; // as a reload would
  const held = await Promise.all([1, 2, 3].map(() => rawHttp(port, '127.0.3.3')));
  try {
    assert.equal(await getFrom(port, '127.0.3.3', '/'), '', 'the fourth is over the new limit');
    assert.equal(await getFrom(port, '127.0.3.3', '/'), '', 'and the fifth');
    assert.deepEqual(reports, [['127.0.3.3', 3]], 'one report for the episode');
    held.pop()!.destroy();
    await until('a slot for 127.0.3.3 again', async () => /^HTTP\/1\.1 200 /.test(await getFrom(port, '127.0.3.3', '/')));
    held.push(await rawHttp(port, '127.0.3.3'));
    assert.equal(await getFrom(port, '127.0.3.3', '/'), '', 'over again');
    assert.deepEqual(reports, [['127.0.3.3', 3], ['127.0.3.3', 3]], 'a new episode, a new report');
  } finally {
    for (const h of held) h.destroy();
  }
});

// A first MX that answers 451 (greylisting) before the message, and a backup MX whose delivery slots are all taken
// with as many transactions waiting (a slow backup, busy with its own domain's mail): the recipients the first MX
// had answered came back marked "destination busy", as if nothing had been tried. The queue runner then set the
// message aside without counting an attempt or keeping the first MX's reply: never recorded, it was never bounced at
// maxAgeHours nor warned about, however long the first MX kept deferring it. A next hop that answered makes it an
// attempt: the backup's backlog is skipped, and the deferral gives the first MX's reply.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

test('a greylisting first MX and a backup MX with a full backlog: an attempt with the first MX\'s reply, not set aside as untried', { timeout: 90_000 }, async () => {
  const greylisting = await startScriptedPeer({ rcpt: (sock) => { sock.write('451 4.7.1 greylisted, come back later\r\n'); return 'answered'; } }, '127.0.0.5');
  const held: net.Socket[] = [];
  const backup = await startScriptedPeer({ endOfData: (sock) => { held.push(sock); return 'answered'; } }, '127.0.0.6', greylisting.port);
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { mx: true, port: greylisting.port }, tls: { mode: 'none' },
        concurrency: 4, perDestinationConcurrency: 1, retrySchedule: [3600],
      },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({
      'grey.test': [{ exchange: 'mx1.grey.test', priority: 10 }, { exchange: 'mx2.grey.test', priority: 20 }],
      // The backup's own domain: its mail fills the backup's slot and line.
      'backup.test': [{ exchange: 'mx2.grey.test', priority: 10 }],
    }, { 'mx1.grey.test': ['127.0.0.5'], 'mx2.grey.test': ['127.0.0.6'] }),
  });
  try {
    await s.send('a@origin.test', ['x0@backup.test']);
    await until('the backup has a message, its slot held', () => held.length === 1, { timeoutMs: 30_000 });
    await s.send('a@origin.test', ['x1@backup.test']);
    await until('a second message waits for the backup\'s slot', () => s.queue!.activeCount === 2, { timeoutMs: 30_000 });
    const id = await s.send('a@origin.test', ['b@grey.test']);
    await until('the message tried, or set aside', () => s.attempts.some((x) => x.id === id) || s.queue!.parkedCount > 0, { timeoutMs: 30_000 });
    assert.equal(s.queue!.parkedCount, 0, 'not set aside as untried');
    const e = s.attempts.find((x) => x.id === id)!;
    assert.equal(e.outcomes[0]!.status, 'temporary');
    assert.match(e.outcomes[0]!.reply, /451 4\.7\.1 greylisted/, 'the first MX\'s reply');
    assert.match(e.outcomes[0]!.remoteMta ?? '', /mx1\.grey\.test/);
  } finally {
    for (const sock of held) sock.destroy();
    await s.stop();
    greylisting.close();
    backup.close();
  }
});

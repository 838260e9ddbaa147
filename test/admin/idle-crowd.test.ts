// Connections that ask nothing cannot keep the scraper out of the admin listener. Over admin.maxConnectionsPerIp
// (8) or the listener's 64, a new connection used to be closed at once while the ones holding the slots sent
// nothing, or a request a byte at a time, for up to the 10 s header timeout, and were opened again as each was
// cut: on loopback every local user shares 127.0.0.1, so any of them kept a Prometheus on 127.0.0.1 out for good.
// Now the connection that has gone longest without progress is closed for the new one; one whose request is
// being answered never is (then the new one is closed unanswered, as before).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startAdminServer, MAX_CONNECTIONS } from '../../engine/admin/admin-server.ts';
import { getFrom, rawHttp } from '../helpers/http-per-address.ts';
import { until } from '../helpers/wait.ts';

function tracked(sockets: net.Socket[]): () => number[] {
  const closedAt: number[] = [];
  sockets.forEach((s, i) => s.once('close', () => closedAt.push(i)));
  return () => [...closedAt].sort((a, b) => a - b);
}

test('an address at its cap with silent and half-sent connections: a scrape from it is answered; the oldest of them is closed for it', async () => {
  const events: string[] = [];
  const admin = await startAdminServer('127.0.0.1:0', { readiness: async () => ({}), status: async () => ({}) }, {
    maxConnectionsPerIp: 8, ipv6PrefixLength: 64,
    refused: (client) => events.push(`refused ${client}`), madeRoom: (client) => events.push(`made room ${client}`),
  });
  const held: net.Socket[] = [];
  try {
    const port = admin.address.port;
    for (let i = 0; i < 8; i++) {
      const s = await rawHttp(port, '127.0.4.1');
      if (i % 2 === 1) s.write('GET /metr'); // a request line begun, never ended
      held.push(s);
    }
    const closedOnes = tracked(held);
    assert.match(await getFrom(port, '127.0.4.1', '/metrics'), /^HTTP\/1\.1 200 /, 'the scrape is answered');
    await until('the oldest held connection closed', () => closedOnes().length > 0);
    assert.deepEqual(closedOnes(), [0], 'only the oldest, not by a timeout');
    assert.match(await getFrom(port, '127.0.4.1', '/healthz'), /^HTTP\/1\.1 200 /, 'and again');
    assert.deepEqual(events, ['made room 127.0.4.1'], 'logged once for the episode');
  } finally {
    for (const s of held) s.destroy();
    await admin.close();
  }
});

test('an address at its cap with every connection being answered: a new one from it is closed unanswered; another address is answered', async () => {
  const events: string[] = [];
  let asked = 0;
  let release!: () => void;
  const released = new Promise<void>((resolve) => { release = resolve; });
  const admin = await startAdminServer('127.0.0.1:0', {
    readiness: async (listener) => { if (listener?.startsWith('slow')) { asked++; await released; } return {}; },
    status: async () => ({}),
  }, { maxConnectionsPerIp: 8, ipv6PrefixLength: 64, refused: (client) => events.push(`refused ${client}`), madeRoom: (client) => events.push(`made room ${client}`) });
  const held: net.Socket[] = [];
  try {
    const port = admin.address.port;
    const answers: string[] = [];
    for (let i = 0; i < 8; i++) {
      const s = await rawHttp(port, '127.0.4.2');
      answers.push('');
      s.on('data', (d: Buffer) => { answers[i] += d.toString('latin1'); });
      s.write(`GET /readyz?listener=slow${i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`); // one check each (a listener each)
      held.push(s);
    }
    await until('the 8 requests being answered', () => asked === 8);
    const closedOnes = tracked(held);
    assert.equal(await getFrom(port, '127.0.4.2', '/healthz'), '', 'closed unanswered');
    assert.match(await getFrom(port, '127.0.4.3', '/healthz'), /^HTTP\/1\.1 200 /, 'another address is answered');
    assert.deepEqual(closedOnes(), [], 'none closed for it');
    release();
    await until('the 8 answered', () => answers.every((a) => /^HTTP\/1\.1 200 /.test(a)));
    assert.deepEqual(events, ['refused 127.0.4.2']);
  } finally {
    release();
    for (const s of held) s.destroy();
    await admin.close();
  }
});

test(`the listener full (${MAX_CONNECTIONS} silent connections of 16 addresses): a scrape from another address is answered; the oldest is closed for it`, async () => {
  const admin = await startAdminServer('127.0.0.1:0', { readiness: async () => ({}), status: async () => ({}) }, { maxConnectionsPerIp: 8, ipv6PrefixLength: 64 });
  const crowd: net.Socket[] = [];
  try {
    const port = admin.address.port;
    for (let i = 0; i < MAX_CONNECTIONS; i++) crowd.push(await rawHttp(port, `127.0.5.${1 + (i % 16)}`));
    const closedOnes = tracked(crowd);
    assert.match(await getFrom(port, '127.0.5.99', '/metrics'), /^HTTP\/1\.1 200 /);
    await until('the oldest of the crowd closed', () => closedOnes().length > 0);
    assert.deepEqual(closedOnes(), [0]);
  } finally {
    for (const s of crowd) s.destroy();
    await admin.close();
  }
});

// Under `postern serve` every accepted connection waits in the supervisor's one queue until a worker takes
// it. A client far over its limit only got 421 from the worker, after a hand-over, so a flood (one address,
// or many against maxConnections) filled the queue every other client waits in. Beyond twice
// maxConnectionsPerIp (slots taken plus connections waiting) or twice maxConnections, the supervisor now
// closes the connection at accept, unanswered, as implicit TLS does beyond twice the per-IP limit.
// The greeting delay keeps the connections under the limit open (each holds its slot) while the test adds more.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { startCluster, workerPid } from '../helpers/cluster.ts';

/** A raw connection from `localAddress`: what it received, and a promise of its close. */
async function open(port: number, localAddress: string): Promise<{ socket: net.Socket; received: () => string; closed: Promise<unknown> }> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  socket.on('error', () => undefined);
  let got = '';
  socket.on('data', (d: Buffer) => { got += d.toString('latin1'); });
  const closed = once(socket, 'close');
  await once(socket, 'connect');
  return { socket, received: () => got, closed };
}

/** Resolves true when `p` settles within `ms` (a hang guard: the close is expected at once). */
const within = (p: Promise<unknown>, ms: number): Promise<boolean> =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);

test('beyond twice maxConnectionsPerIp, and beyond twice maxConnections, the supervisor closes at accept', { timeout: 120_000 }, async () => {
  const c = await startCluster({
    config: `
workers: 1
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 60000, maxConnectionsPerIp: 2 }
  - name: few
    listen: 127.0.0.1:{PORT:few}
    reverseDns: false
    limits: { greetingDelayMs: 60000, maxConnections: 3 }
`,
  });
  const sockets: net.Socket[] = [];
  try {
    await workerPid(c, 0);
    // One address: four connections (two within its limit, two for a 421 after the greeting delay) are kept...
    for (let i = 0; i < 4; i++) sockets.push((await open(c.port('in'), '127.0.4.1')).socket);
    // ...the fifth and sixth would be over twice the limit: closed at once, without a byte.
    for (let i = 0; i < 2; i++) {
      const extra = await open(c.port('in'), '127.0.4.1');
      sockets.push(extra.socket);
      assert.ok(await within(extra.closed, 30_000), 'closed at accept, not queued for a worker');
      assert.equal(extra.received(), '');
    }
    // Another address is not affected.
    const other = await open(c.port('in'), '127.0.4.2');
    sockets.push(other.socket);
    assert.equal(await within(other.closed, 500), false);
    // The listener: six connections from six addresses are kept (twice maxConnections), the seventh is closed.
    for (let i = 1; i <= 6; i++) sockets.push((await open(c.port('few'), `127.0.5.${i}`)).socket);
    const seventh = await open(c.port('few'), '127.0.5.7');
    sockets.push(seventh.socket);
    assert.ok(await within(seventh.closed, 30_000), 'closed at accept');
    assert.equal(seventh.received(), '');
    await c.waitFor('one line per flooding address or listener', () =>
      c.logs.filter((l) => /closed at accept/.test(String(l.msg))).length === 2, 30_000);
    assert.deepEqual(c.logs.filter((l) => /closed at accept/.test(String(l.msg))).map((l) => [l.listener, l.client]), [['in', '127.0.4.1'], ['few', '127.0.5.7']]);
  } finally {
    for (const s of sockets) s.destroy();
    await c.stop();
  }
});

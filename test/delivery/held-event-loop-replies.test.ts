/**
 * A next hop's reply that came within commandTimeoutMs is a reply, however late the queue process's event loop gets
 * to it. The next hop runs on its own thread (its own event loop), so it answers while the test holds the queue's,
 * as a loaded machine that descheduled the process, or one long turn of other work, holds it: the reply then waits
 * in the socket while the limit passes. An event loop that gets the CPU back runs its timers before it reads its
 * sockets, and the reply deadline (reply-deadline.ts) and nodemailer's socket timeout, judged in their timers, failed
 * the connection with ETIMEDOUT: a delivery deferred, and a message that had gone out perhaps sent twice.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { ConnectionPool, type Endpoint } from '../../engine/delivery/connection-pool.ts';
import type { ConnectionSecurity } from '../../engine/delivery/outbound-tls.ts';

const PLAIN: ConnectionSecurity = { secure: false, ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {}, mode: 'none', key: 'none' };
const TIMEOUT_MS = 2000;

/** Hold this thread's event loop for `ms`. */
function holdEventLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

/**
 * A next hop on its own thread that holds back one answer (`held`: its greeting, or its EHLO reply): it tells the
 * test ('connected' or 'ehlo') and answers once told to (flags[0] = 1), setting flags[1] when the answer is written.
 */
function nextHopThread(flags: Int32Array, held: 'greeting' | 'ehlo'): Worker {
  return new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { flags, held } } = require('node:worker_threads');
    const server = net.createServer((s) => {
      if (held === 'greeting') {
        parentPort.postMessage('connected');
        Atomics.wait(flags, 0, 0); // until the test holds the queue's event loop
        s.write('220 next-hop.test ESMTP\\r\\n', () => Atomics.store(flags, 1, 1));
      } else s.write('220 next-hop.test ESMTP\\r\\n');
      let seen = '';
      s.on('data', (b) => {
        seen += b.toString('latin1');
        if (!seen.endsWith('\\r\\n')) return;
        const line = seen;
        seen = '';
        if (/^EHLO/i.test(line) && held === 'greeting') s.write('250 next-hop.test\\r\\n');
        else if (/^EHLO/i.test(line)) {
          parentPort.postMessage('ehlo');
          Atomics.wait(flags, 0, 0); // until the test holds the queue's event loop
          s.write('250 next-hop.test\\r\\n', () => Atomics.store(flags, 1, 1));
        } else if (/^QUIT/i.test(line)) s.end('221 bye\\r\\n');
      });
      s.on('error', () => {});
    });
    server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port));`, { eval: true, workerData: { flags, held } });
}

for (const [held, what, limit] of [['ehlo', 'an EHLO reply', 'commandTimeoutMs'], ['greeting', 'a greeting', 'connectTimeoutMs']] as const) {
  test(`${what} written within ${limit} while the event loop was held past it: the connection opens, no ETIMEDOUT`, async () => {
    const flags = new Int32Array(new SharedArrayBuffer(8));
    const hop = nextHopThread(flags, held);
    const pool = new ConnectionPool();
    try {
      const [port] = await once(hop, 'message') as [number];
      const endpoint: Endpoint = { host: 'mx.next-hop.test', address: '127.0.0.1', port, security: PLAIN };
      const opening = pool.open(endpoint, { heloName: 'postern.test', connectTimeoutMs: TIMEOUT_MS, commandTimeoutMs: TIMEOUT_MS });
      opening.catch(() => undefined);
      await once(hop, 'message'); // 'connected' or 'ehlo': the clocks run
      // From here the event loop is held: the next hop answers at once; the hold lasts past the limit.
      Atomics.store(flags, 0, 1);
      Atomics.notify(flags, 0);
      while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
      holdEventLoop(TIMEOUT_MS + 200);
      const opened = await opening;
      assert.ok(opened.conn, 'opened');
      pool.release(opened, false);
    } finally {
      pool.close();
      await hop.terminate();
    }
  });
}

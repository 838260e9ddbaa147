/**
 * A balancer's PROXY header sent within proxyProtocol.headerTimeoutMs is taken, however late the server's event loop
 * gets to it. The balancer (a client on its own thread) sends while the test holds the server's event loop, as a
 * loaded machine that descheduled the server holds it: the header then waits in the socket while the time passes.
 * An event loop that gets the CPU back runs its timers before it reads its sockets, and the header's timeout,
 * judged in its timer, closed the connection unread: HAProxy saw it reset, and the client behind it got no greeting.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { startTestServer } from '../helpers/postern.ts';

const HEADER_MS = 2000;

const asleep = new Int32Array(new SharedArrayBuffer(4));
/** Hold this thread's event loop for `ms` (the server's sockets are all on it). */
function holdEventLoop(ms: number): void {
  // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
  Atomics.wait(asleep, 0, 0, ms);
}

test('a PROXY header sent within headerTimeoutMs while the event loop was held past it: taken, the client greeted', async () => {
  const s = await startTestServer({ config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    proxyProtocol: { trusted: [127.0.0.0/8], headerTimeoutMs: ${HEADER_MS} }
    limits: { greetingDelayMs: 0 }
` });
  const flags = new Int32Array(new SharedArrayBuffer(8));
  // A balancer on its own thread: connects, tells the test ('ready'), sends its header once told to (flags[0] = 1),
  // sets flags[1] when it is written, and posts the first thing it reads, or that the connection closed.
  const balancer = new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { port, flags } } = require('node:worker_threads');
    const s = net.connect(port, '127.0.0.1', () => {
      parentPort.postMessage('ready');
      Atomics.wait(flags, 0, 0);
      s.write('PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\\r\\n', () => Atomics.store(flags, 1, 1));
    });
    s.once('data', (b) => parentPort.postMessage(String(b)));
    s.on('close', () => parentPort.postMessage('closed'));
    s.on('error', () => undefined);`,
  { eval: true, workerData: { port: s.port('mx'), flags } });
  try {
    await once(balancer, 'message'); // 'ready': connected
    // A few turns of this loop, so that the server has accepted the connection and its header's clock runs.
    for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 1));
    // Held from the check phase: the loop's next turn starts with its timers, as a descheduled process's does.
    // (Held from the timers phase, the loop's clock would not move before its poll phase read the header.)
    await new Promise((r) => setImmediate(r));
    const first = once(balancer, 'message');
    // From here the event loop is held: the balancer sends at once; the hold lasts past the header's time limit.
    Atomics.store(flags, 0, 1);
    Atomics.notify(flags, 0);
    while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
    holdEventLoop(HEADER_MS + 200);
    assert.match(String((await first)[0]), /^220 /);
  } finally {
    await balancer.terminate();
    await s.stop();
  }
});

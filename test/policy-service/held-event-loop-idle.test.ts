/**
 * A policy client (Postfix's check_policy_service) whose request came within idleTimeoutMs is answered, however late
 * the server's event loop gets to it. The client runs on its own thread, so it sends while the test holds the
 * server's event loop (as a loaded machine that descheduled the server holds it): the request then waits in the
 * socket while the idle time passes. An event loop that gets the CPU back runs its timers before it reads its
 * sockets, and the idle timeout, judged in its timer, closed the connection with the request unread: Postfix then
 * logs "problem talking to server" and defers the mail it was asking about.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { startTestServer } from '../helpers/postern.ts';
import { requestText, rcptRequest } from './helpers/policy-client.ts';

const IDLE_MS = 2000;

const asleep = new Int32Array(new SharedArrayBuffer(4));
/** Hold this thread's event loop for `ms`. */
function holdEventLoop(ms: number): void {
  // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
  Atomics.wait(asleep, 0, 0, ms);
}

test('a request sent within idleTimeoutMs while the event loop was held past it: answered, the connection kept', async () => {
  const s = await startTestServer({ config: `
localDomains: [example.org]
listeners:
  - { name: smtp, listen: 127.0.0.1:0 }
policyServices:
  - { name: main, listen: 127.0.0.1:0, limits: { idleTimeoutMs: ${IDLE_MS} } }
` });
  const flags = new Int32Array(new SharedArrayBuffer(8));
  // A client on its own thread: connects, tells the test ('ready'), sends its request once told to (flags[0] = 1),
  // sets flags[1] when it is written, and posts what it reads.
  const client = new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { port, request, flags } } = require('node:worker_threads');
    const s = net.connect(port, '127.0.0.1', () => {
      parentPort.postMessage('ready');
      Atomics.wait(flags, 0, 0);
      s.write(request, () => Atomics.store(flags, 1, 1));
    });
    let seen = '';
    s.on('data', (b) => { seen += b; if (seen.endsWith('\\n\\n')) parentPort.postMessage(seen); });
    s.on('error', (e) => parentPort.postMessage('closed: ' + e.code));`,
  { eval: true, workerData: { port: Number(s.policyAddresses.get('main')!.split(':').pop()), request: requestText(rcptRequest({ recipient: 'bob@example.org' })), flags } });
  try {
    await once(client, 'message'); // 'ready': connected, so the idle time runs
    const answer = once(client, 'message');
    // From here the event loop is held: the client sends at once; the hold lasts past the idle time.
    Atomics.store(flags, 0, 1);
    Atomics.notify(flags, 0);
    while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
    holdEventLoop(IDLE_MS + 200);
    assert.match(String((await answer)[0]), /^action=/);
  } finally {
    await client.terminate();
    await s.stop();
  }
});

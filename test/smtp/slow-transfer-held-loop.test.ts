/**
 * The loaded-machine rule for limits.minDataRate: a client whose message came at a normal rate while the server's
 * event loop was held (a loaded machine descheduled it, or one long turn of other work) has its bytes waiting in
 * the socket when the loop gets the CPU back, maybe behind a newcomer that found the listener full. Judged as the
 * newcomer is accepted, the transfer looked slow (only the bytes read before the hold counted over the whole
 * window) and was closed; judged in the check phase, after that turn's reads, its bytes count and it keeps its slot.
 *
 * The clients run on their own thread (the test holds the server's, which is this one): the newcomer connects
 * first, then the sender writes, both while the loop is held. A guard rather than a reproduction: on a plain
 * listener the accept path already reaches the session's start in the check phase (smtp-server's session id is
 * given by a setImmediate), so judging at once passed too; behind a PROXY header or under `postern serve` (a slot
 * by round trip) the newcomer starts in a poll callback, which is why the judgement waits for the check phase.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { startTestServer } from '../helpers/postern.ts';

const WINDOW_MS = 1000;

const asleep = new Int32Array(new SharedArrayBuffer(4));
function holdEventLoop(ms: number): void {
  // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
  Atomics.wait(asleep, 0, 0, ms);
}

/**
 * The sender goes to DATA, sends its header and posts 'ready'; once told (flags[0] = 1) the newcomer connects, then
 * the sender writes 64 KiB of its message and sets flags[1]. Replies come back as 'sender: …' and 'newcomer: …';
 * the message 'dot' ends the sender's message.
 */
function clients(port: number, flags: Int32Array): Worker {
  return new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { port, flags } } = require('node:worker_threads');
    const setup = ['EHLO sender.test\\r\\n', 'MAIL FROM:<a@example.org>\\r\\n', 'RCPT TO:<b@example.com>\\r\\n', 'DATA\\r\\n'];
    const sender = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' });
    let seen = '';
    let step = 0;
    sender.on('data', (b) => {
      seen += b.toString('latin1');
      if (!/^\\d{3} .*\\r\\n/m.test(seen)) return;
      const got = seen;
      seen = '';
      if (step < setup.length) { sender.write(setup[step++]); return; }
      if (step++ === setup.length) {
        sender.write('Subject: held\\r\\n\\r\\n');
        parentPort.postMessage('ready');
        Atomics.wait(flags, 0, 0);
        const newcomer = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.3' });
        newcomer.on('data', (r) => parentPort.postMessage('newcomer: ' + r.toString('latin1')));
        newcomer.on('connect', () => {
          sender.write(('x'.repeat(1022) + '\\r\\n').repeat(64), () => Atomics.store(flags, 1, 1));
        });
        return;
      }
      parentPort.postMessage('sender: ' + got);
    });
    sender.on('close', () => parentPort.postMessage('sender: closed'));
    parentPort.on('message', () => sender.write('\\r\\n.\\r\\n'));`, { eval: true, workerData: { port, flags } });
}

test('a transfer whose bytes waited in the socket while the server\'s loop was held is not judged slow for a newcomer', { timeout: 60_000 }, async () => {
  const s = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 1000, dataRateWindowMs: ${WINDOW_MS} }
`,
  });
  const flags = new Int32Array(new SharedArrayBuffer(8));
  const worker = clients(s.port('one'), flags);
  const messages: string[] = [];
  worker.on('message', (m: string) => messages.push(m));
  try {
    await once(worker, 'message'); // 'ready': the sender's window runs from its 354
    Atomics.store(flags, 0, 1);
    Atomics.notify(flags, 0);
    while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
    holdEventLoop(WINDOW_MS + 300); // the whole window passes held: 64 KiB wait in the sender's socket
    const next = async (who: string): Promise<string> => {
      for (;;) {
        const found = messages.findIndex((m) => m.startsWith(who));
        if (found >= 0) return messages.splice(found, 1)[0]!;
        await once(worker, 'message');
      }
    };
    assert.match(await next('newcomer: '), /^newcomer: 421 4\.7\.0 .*Too many connected clients, try again in a moment/, messages.join('\n'));
    worker.postMessage('dot');
    assert.match(await next('sender: '), /^sender: 250 /, messages.join('\n'));
  } finally {
    await worker.terminate();
    await s.stop();
  }
});

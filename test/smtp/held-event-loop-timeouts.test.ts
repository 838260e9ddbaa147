/**
 * A client that sent its line within `socketTimeoutMs` is not timed out, however late the server's event loop gets
 * to it. The client runs on its own thread (its own event loop), so it sends while the test holds the server's,
 * as a loaded machine that descheduled the server, or one long turn of other work, holds it: the line then waits
 * in the socket while the time limit passes. An event loop that gets the CPU back runs its timers before it reads
 * its sockets, and the idle timeout (smtp-server's) and the line deadline (line-deadline.ts), judged in their
 * timers, answered `421 Timeout - closing connection` to a client that had done nothing wrong.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { PLAIN_MX_CONFIG, startTestServer } from '../helpers/postern.ts';

const TIMEOUT_MS = 2000;

const asleep = new Int32Array(new SharedArrayBuffer(4));
/** Hold this thread's event loop for `ms` (the server's sessions are all on it). */
function holdEventLoop(ms: number): void {
  // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
  Atomics.wait(asleep, 0, 0, ms);
}

/**
 * A client on its own thread: connects, sends each of `setup` once the reply before it is in (the greeting first),
 * then `first` (part of a line, or nothing), and tells the test (message 'ready'); once told to go (flags[0] = 1)
 * sends `rest` and sets flags[1]; posts every reply it reads after that.
 */
function clientThread(port: number, setup: readonly string[], first: string, rest: string, flags: Int32Array): Worker {
  return new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { port, setup, first, rest, flags } } = require('node:worker_threads');
    const s = net.connect(port, '127.0.0.1');
    let seen = '';
    let step = 0;
    s.on('data', (b) => {
      seen += b.toString('latin1');
      if (!/^\\d{3} .*\\r\\n/m.test(seen)) return; // a reply's last line
      const got = seen;
      seen = '';
      if (step < setup.length) { s.write(setup[step++]); return; }
      if (step === setup.length) {
        step++;
        if (first) s.write(first);
        parentPort.postMessage('ready');
        Atomics.wait(flags, 0, 0); // until the test holds the server's event loop
        s.write(rest, () => Atomics.store(flags, 1, 1));
        return;
      }
      parentPort.postMessage(got);
    });`, { eval: true, workerData: { port, setup, first, rest, flags } });
}

const EHLO = ['EHLO client.test\r\n'];
const TO_DATA = [...EHLO, 'MAIL FROM:<a@example.org>\r\n', 'RCPT TO:<b@example.com>\r\n', 'DATA\r\n'];
const CASES = [
  ['a whole command', EHLO, '', 'NOOP\r\n', 'socketTimeoutMs'],
  ['the end of a line begun before', EHLO, 'NO', 'OP\r\n', 'socketTimeoutMs'],
  ['the end of a message begun before', TO_DATA, 'Subject: held\r\n', '\r\nbody\r\n.\r\n', 'dataTimeoutMs'],
  // smtp-server parses the rest of a chunk after each dot-stuffed line in the next turn: the final dot, read in time,
  // was still in the parser when the deadline was looked at.
  ['the end of a message with dot-stuffed lines begun before', TO_DATA, 'Subject: held\r\n', '\r\n..a\r\n..b\r\n.\r\n', 'dataTimeoutMs'],
] as const;

for (const [what, setup, first, rest, limit] of CASES) {
  test(`${what} sent within ${limit} while the server's event loop was held past it: answered, not timed out`, async () => {
    const s = await startTestServer({ config: PLAIN_MX_CONFIG.replace('limits: { greetingDelayMs: 0 }', `limits: { greetingDelayMs: 0, ${limit}: ${TIMEOUT_MS} }`) });
    const flags = new Int32Array(new SharedArrayBuffer(8));
    const client = clientThread(s.port('mx'), setup, first, rest, flags);
    try {
      await once(client, 'message'); // 'ready': the server's clocks run from its last reply (and the line begun)
      const reply = once(client, 'message');
      // From here the event loop is held: the client sends at once; the hold lasts past the time limit.
      Atomics.store(flags, 0, 1);
      Atomics.notify(flags, 0);
      while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
      holdEventLoop(TIMEOUT_MS + 200);
      assert.match(String((await reply)[0]), /^250 /);
    } finally {
      await client.terminate();
      await s.stop();
    }
  });
}

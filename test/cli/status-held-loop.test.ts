/**
 * `postern status` takes an answer the server sent within its wait, however late its own event loop gets to it. The
 * server (here a peer on its own thread, on the data directory's status socket) answers while the test holds the
 * command's event loop, as a loaded machine that descheduled the command holds it: the answer then waits in the
 * socket while the wait passes. An event loop that gets the CPU back runs its timers before it reads its sockets,
 * and the wait, judged in its timer, gave up on the answer unread: exit 4, "does not answer: hung or overloaded",
 * for a server that had answered at once (a monitoring check paging someone on a busy host).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ANSWER_MS = 2000;
process.env.POSTERN_STATUS_ANSWER_MS = String(ANSWER_MS); // read as status.ts loads
const { statusCommand } = await import('../../engine/cli/status.ts');

let dataDir = '';
after(() => rm(dataDir, { recursive: true, force: true }));

const asleep = new Int32Array(new SharedArrayBuffer(4));
/** Hold this thread's event loop for `ms` (the command's socket is on it). */
function holdEventLoop(ms: number): void {
  // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
  Atomics.wait(asleep, 0, 0, ms);
}

test('an answer sent within the wait while the command\'s event loop was held past it: taken (exit 0), not "does not answer"', async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'postern-status-held-'));
  const flags = new Int32Array(new SharedArrayBuffer(8));
  // The server's side: tells the test of the connection ('connected'), answers a whole status once told to
  // (flags[0] = 1) and sets flags[1] once it is written.
  const peer = new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { path, flags } } = require('node:worker_threads');
    const body = JSON.stringify({ lastError: null, cluster: { processes: [{ role: 'worker', index: 0, ready: true }] } });
    net.createServer((s) => {
      s.on('error', () => undefined);
      s.once('data', () => {
        parentPort.postMessage('connected');
        Atomics.wait(flags, 0, 0);
        s.end('HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: ' + Buffer.byteLength(body) + '\\r\\nconnection: close\\r\\n\\r\\n' + body,
          () => Atomics.store(flags, 1, 1));
      });
    }).listen(path, () => parentPort.postMessage('listening'));`,
  { eval: true, workerData: { path: join(dataDir, 'postern.sock'), flags } });
  const write = process.stdout.write;
  try {
    await once(peer, 'message'); // 'listening'
    process.stdout.write = () => true; // the status JSON
    const code = statusCommand({ dataDir });
    await once(peer, 'message'); // 'connected': the request is in, the wait runs
    // From here the event loop is held: the peer answers at once; the hold lasts past the wait.
    Atomics.store(flags, 0, 1);
    Atomics.notify(flags, 0);
    while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
    holdEventLoop(ANSWER_MS + 200);
    assert.equal(await code, 0);
  } finally {
    process.stdout.write = write;
    await peer.terminate();
  }
});

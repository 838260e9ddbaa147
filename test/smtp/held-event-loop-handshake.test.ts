/**
 * A TLS handshake whose client sent in time is completed, however late the server's event loop gets to it; one that
 * trickles still ends within twice limits.tlsHandshakeTimeoutMs. The client runs on its own thread, so it sends its
 * ClientHello while the test holds the server's event loop (as a loaded machine that descheduled the server holds
 * it): the ClientHello then waits in the socket while the time limit passes. An event loop that gets the CPU back
 * runs its timers before it reads its sockets, and the handshake deadline, judged in its timer, closed the
 * connection with the ClientHello unread, on implicit TLS and after STARTTLS alike: the client's mail waited.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { makeTestPki } from '../helpers/pki.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { closed } from '../helpers/wait.ts';

const HANDSHAKE_MS = 2000;

let s: TestServer;
let ca: string;
before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  const limits = { tlsHandshakeTimeoutMs: HANDSHAKE_MS };
  s = await startTestServer({
    config: configYaml({
      listeners: [
        testListener('starttls', { tls: testServerTls(pki), limits }),
        testListener('implicit', { tls: { ...testServerTls(pki), mode: 'implicit' }, limits }),
      ],
    }),
  });
});
after(() => s?.stop());

const asleep = new Int32Array(new SharedArrayBuffer(4));
/** Hold this thread's event loop for `ms` (the server's sockets are all on it). */
function holdEventLoop(ms: number): void {
  // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
  Atomics.wait(asleep, 0, 0, ms);
}

/**
 * A client on its own thread: connects (on STARTTLS, reads the greeting, sends EHLO and STARTTLS and reads their
 * replies), tells the test ('ready'); once told to go (flags[0] = 1) starts its handshake and sets flags[1] once its
 * ClientHello is written; once secure, on STARTTLS sends EHLO again; posts the first reply it reads over TLS, or
 * 'closed'.
 */
function clientThread(port: number, starttls: boolean, flags: Int32Array): Worker {
  return new Worker(`
    const net = require('node:net');
    const tls = require('node:tls');
    const { parentPort, workerData: { port, starttls, ca, flags } } = require('node:worker_threads');
    const raw = net.connect(port, '127.0.0.1');
    raw.on('error', () => undefined);
    const handshake = () => {
      parentPort.postMessage('ready');
      Atomics.wait(flags, 0, 0); // until the test holds the server's event loop
      const t = tls.connect({ socket: raw, ca, servername: 'localhost' });
      const written = () => raw.bytesWritten > 0 ? Atomics.store(flags, 1, 1) : setImmediate(written);
      written();
      t.on('secureConnect', () => { if (starttls) t.write('EHLO client.test\\r\\n'); });
      t.once('data', (b) => parentPort.postMessage(String(b)));
      t.on('error', () => undefined);
      t.on('close', () => parentPort.postMessage('closed'));
    };
    if (!starttls) raw.once('connect', handshake);
    else {
      let seen = '';
      let step = 0;
      const onData = (b) => {
        seen += b;
        if (!/^\\d{3} .*\\r\\n/m.test(seen)) return;
        seen = '';
        if (step === 0) raw.write('EHLO client.test\\r\\n');
        if (step === 1) raw.write('STARTTLS\\r\\n');
        if (step === 2) { raw.off('data', onData); handshake(); }
        step++;
      };
      raw.on('data', onData);
    }`, { eval: true, workerData: { port, starttls, ca, flags } });
}

for (const [listener, starttls, reply] of [['implicit', false, /^220 /], ['starttls', true, /^250[ -]/]] as const) {
  test(`${listener}: a ClientHello sent within tlsHandshakeTimeoutMs while the server's event loop was held past it: the handshake completes`, async () => {
    const flags = new Int32Array(new SharedArrayBuffer(8));
    const client = clientThread(s.port(listener), starttls, flags);
    try {
      await once(client, 'message'); // 'ready': connected (after STARTTLS, its 220 read), so the handshake's clock runs
      if (!starttls) {
        // A few turns, so that the server has accepted the connection and armed its deadline; then held from the
        // check phase, so the loop's next turn starts with its timers, as a descheduled process's does.
        for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 1));
        await new Promise((r) => setImmediate(r));
      }
      const first = once(client, 'message');
      Atomics.store(flags, 0, 1);
      Atomics.notify(flags, 0);
      while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
      holdEventLoop(HANDSHAKE_MS + 200);
      assert.match(String((await first)[0]), reply);
    } finally {
      await client.terminate();
    }
  });
}

test('implicit TLS, a ClientHello sent a byte at a time: closed long before it is complete (given its time once more, not for ever)', async () => {
  // A TLS record header announcing a ClientHello of 512 bytes, then one byte of it each 20 ms: progress at every look.
  // Given its time again for each progress, it would be closed only once the 512 bytes were in (as a bad ClientHello).
  const socket = net.connect(s.port('implicit'), '127.0.0.1');
  socket.on('error', () => undefined);
  socket.write('\x16\x03\x01\x02\x00');
  let sent = 0;
  const trickle = setInterval(() => { if (sent < 600) { sent++; socket.write('\x01'); } }, 20);
  try {
    await closed(socket);
  } finally {
    clearInterval(trickle);
  }
  assert.ok(sent < 400, `closed after ${sent} bytes of the ClientHello's 512`);
});

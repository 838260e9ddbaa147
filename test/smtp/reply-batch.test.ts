// Replies of one event-loop turn leave together at its end (engine/smtp/reply-batch.ts), on TLS sockets
// only; nothing is lost or reordered, also when the connection closes in the same turn.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { batchReply, flushAfterScriptCalls } from '../../engine/smtp/reply-batch.ts';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type TlsClientOptions } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';

let pki: TestPki;
let client: TlsClientOptions;

before(async () => {
  pki = await makeTestPki();
  client = await clientTlsOptions(pki, 'alice');
});

/** A connected pair on 127.0.0.1: the server's socket (TLS or plain) and the client's. */
async function pair(useTls: boolean): Promise<{ server: net.Socket; client: net.Socket; close(): void }> {
  const listener = useTls
    ? tls.createServer({ cert: await readFile(pki.server.cert), key: await readFile(pki.server.key) })
    : net.createServer();
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const { port } = listener.address() as net.AddressInfo;
  const accepted = once(listener, useTls ? 'secureConnection' : 'connection');
  const c = useTls ? tls.connect({ port, host: '127.0.0.1', ca: client.ca, servername: 'localhost' }) : net.connect(port, '127.0.0.1');
  await once(c, useTls ? 'secureConnect' : 'connect');
  const [s] = await accepted as [net.Socket];
  return { server: s, client: c, close() { c.destroy(); s.destroy(); listener.close(); } };
}

test('writes to a TLS socket wait for the end of the turn, then leave together and in order', async () => {
  const p = await pair(true);
  try {
    let received = '';
    p.client.setEncoding('utf8');
    p.client.on('data', (d: string) => { received += d; });
    batchReply(p.server);
    p.server.write('250 one\r\n');
    batchReply(p.server); // a second reply in the same turn
    p.server.write('250 two\r\n');
    assert.equal(p.server.writableCorked, 1, 'held back once, not twice');
    assert.ok(p.server.writableLength > 0, 'nothing written yet');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(p.server.writableCorked, 0, 'released at the end of the turn');
    await until('both replies at the client', () => received.length >= 18);
    assert.equal(received, '250 one\r\n250 two\r\n');
  } finally {
    p.close();
  }
});

test('a reply written by a script batch in the check phase leaves in that same check phase, not a turn later', async () => {
  const p = await pair(true);
  try {
    let received = '';
    p.client.setEncoding('utf8');
    p.client.on('data', (d: string) => { received += d; });
    // As the sandbox does: the batch is queued when the first call of the turn starts, and writes the
    // verdicts' replies when it runs, in the check phase.
    setImmediate(() => {
      batchReply(p.server);
      p.server.write('250 verdict\r\n');
    });
    flushAfterScriptCalls(); // as session-policy does, right after starting the call
    // Queued behind both: runs in the same check phase.
    const corked = await new Promise<number>((resolve) => setImmediate(() => resolve(p.server.writableCorked)));
    assert.equal(corked, 0, 'released in the check phase that wrote it');
    await until('the reply at the client', () => received.length >= 13);
    assert.equal(received, '250 verdict\r\n');
  } finally {
    p.close();
  }
});

test('a plaintext socket is never held back (a STARTTLS upgrade may follow in the same turn)', async () => {
  const p = await pair(false);
  try {
    batchReply(p.server);
    p.server.write('220 go ahead\r\n');
    assert.equal(p.server.writableCorked, 0);
  } finally {
    p.close();
  }
});

test('pipelined commands after STARTTLS get every reply in order, and the reply to QUIT arrives before the close', async () => {
  const s = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('sub', { tls: testServerTls(pki) })] }),
  });
  try {
    const c = await SmtpTestClient.connect(s.port('sub'));
    const ehlo = await c.hello({ starttls: client });
    assert.match(ehlo.text, /PIPELINING/);
    c.socket.write('MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@elsewhere.example>\r\nDATA\r\n');
    assert.equal((await c.read()).code, 250);
    assert.equal((await c.read()).code, 250);
    assert.equal((await c.read()).code, 554, 'relay to another domain is refused');
    assert.equal((await c.read()).code, 354);
    c.socket.write('Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n');
    assert.equal((await c.read()).code, 250);
    assert.equal((await c.read()).code, 221);
    assert.ok(await c.waitClosed(), 'the server closes after QUIT');
    assert.equal((await s.runtime.spool.list()).length, 1);
  } finally {
    await s.stop();
  }
});

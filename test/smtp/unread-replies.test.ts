// A client that pipelines commands and never reads a reply: the server must stop reading from it once its
// replies pile up (smtp-server waits for 'drain' before the next command), so its memory stays bounded and
// other clients are served meanwhile. Over plaintext and after STARTTLS (where replies are corked per turn).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';

let server: TestServer;

before(async () => {
  const pki = await makeTestPki();
  // Junk limits raised far out of the way: this exercises the write backpressure itself, not the limits.
  server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [
      testListener('mx', { reverseDns: false, tls: testServerTls(pki), limits: { maxJunkCommands: 100000000, maxErrors: 100000000 } }),
    ] }),
  });
});
after(() => server.stop());

const PUSH_BYTES = 200 * 1024 * 1024;

/**
 * A Python client that sends EHLO / MAIL / RCPT / RSET / NOOP cycles (EHLO's reply is the large one) and
 * never reads: it stops when it has pushed PUSH_BYTES or when the server has not taken a byte for 5 s
 * (the server stopped reading). Prints the bytes it got through.
 */
const FLOODER = String.raw`
import socket, ssl, sys
port, starttls, total = int(sys.argv[1]), sys.argv[2] == '1', int(sys.argv[3])
s = socket.create_connection(('127.0.0.1', port))
f = s.makefile('rb')
def reply():
    while True:
        line = f.readline()
        if line[3:4] != b'-': return line
reply()
if starttls:
    s.sendall(b'EHLO flood.example\r\n'); reply()
    s.sendall(b'STARTTLS\r\n'); reply()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(s)
block = b'EHLO flood.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRSET\r\nNOOP\r\n' * 200
s.settimeout(5)
sent = 0
try:
    while sent < total:
        s.sendall(block); sent += len(block)
        if sent % (len(block) * 100) < len(block): print(sent, flush=True)
except (socket.timeout, TimeoutError):
    pass
print('done', sent, flush=True)
`;

interface Flood { firstProgress: Promise<void>; done: Promise<number>; stop(): void }

function flood(port: number, starttls: boolean): Flood {
  const child = spawn('/usr/bin/python3', ['-c', FLOODER, String(port), starttls ? '1' : '0', String(PUSH_BYTES)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let progressed: () => void = () => undefined;
  const firstProgress = new Promise<void>((r) => { progressed = r; });
  const done = new Promise<number>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      progressed();
      const m = /done (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => { if (!/done/.test(out)) reject(new Error(`flooder exited ${code}: ${out}`)); });
  });
  return { firstProgress, done, stop: () => { child.kill(); } };
}

// A full collection before each reading, so the figure is what the server holds, not garbage awaiting collection.
v8.setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

function serverMemory(): number {
  collect();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

for (const starttls of [false, true]) {
  test(`a client that never reads its replies (${starttls ? 'STARTTLS' : 'plaintext'}) is stopped, not buffered; others are served`, { timeout: 180_000 }, async () => {
    const base = serverMemory();
    const f = flood(server.port('mx'), starttls);
    try {
      await f.firstProgress;
      const other = await SmtpTestClient.connect(server.port('mx'));
      await other.hello();
      const r = await other.sendMail('x@example.org', ['y@example.com']);
      assert.equal(r.code, 250, r.text);
      await other.quit();
      const pushed = await f.done;
      // The flooder is still connected, its replies unread: what the server holds for it now is the bound.
      const growthMb = (serverMemory() - base) / 2 ** 20;
      console.log(`pushed ${(pushed / 2 ** 20).toFixed(1)} MB; server heap+buffers held ${growthMb.toFixed(1)} MB`);
      assert.ok(pushed < PUSH_BYTES, `the server read all ${PUSH_BYTES} bytes without the client reading a reply`);
      assert.ok(growthMb < 50, `server holds ${growthMb.toFixed(1)} MB`);
    } finally {
      f.stop();
    }
  });
}

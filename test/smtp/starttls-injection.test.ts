// STARTTLS plaintext command injection (CVE-2011-0411 class): commands a client (or a man in the middle)
// pipelines after STARTTLS in the same packet must be discarded, never run inside the TLS session; and
// what the client said before TLS is forgotten (RFC 3207 §4.2): its EHLO, its transaction. STARTTLS once
// TLS is up is refused. Pinned here (smtp-server does it) so that no upgrade of it can bring the hole back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';

let pki: TestPki;
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

/** Everything received on `socket` until a line that starts with `code ` (a reply's last line). */
function until(socket: net.Socket, code: string, got: { text: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      const m = new RegExp(`(^|\\r\\n)${code} [^\\r]*\\r\\n`).exec(got.text);
      if (!m) return;
      socket.off('data', onData);
      const upTo = m.index + m[0].length;
      const text = got.text.slice(0, upTo);
      got.text = got.text.slice(upTo);
      resolve(text);
    };
    const onData = (d: Buffer): void => { got.text += d.toString('latin1'); check(); };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error(`closed before ${code}: ${JSON.stringify(got.text)}`)));
    check();
  });
}

test('commands pipelined after STARTTLS are discarded; the session after TLS starts afresh', async () => {
  const raw = net.connect({ host: '127.0.0.1', port: server.port('mx') });
  await once(raw, 'connect');
  const plain = { text: '' };
  await until(raw, '220', plain);
  raw.write('EHLO before.example\r\nMAIL FROM:<early@elsewhere.example>\r\n');
  await until(raw, '250', plain);
  await until(raw, '250', plain);
  // STARTTLS and, in the same write, what an attacker injects in plaintext.
  raw.write('STARTTLS\r\nRSET\r\nMAIL FROM:<injected@elsewhere.example>\r\nRCPT TO:<victim@example.com>\r\n');
  assert.match(await until(raw, '220', plain), /^220 /);
  raw.removeAllListeners('data');
  const secure = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' });
  await once(secure, 'secureConnect');
  const got = { text: '' };
  secure.write('NOOP\r\n');
  assert.equal(await until(secure, '250', got), '250 2.0.0 OK\r\n', 'nothing but the NOOP\'s reply: no reply to an injected command');
  secure.write('MAIL FROM:<a@elsewhere.example>\r\n');
  assert.match(await until(secure, '503', got), /^503 5\.5\.1 Error: send HELO\/EHLO first\r\n$/, 'the EHLO before TLS is forgotten');
  secure.write('EHLO after.example\r\n');
  await until(secure, '250', got);
  secure.write('RCPT TO:<victim@example.com>\r\n');
  assert.match(await until(secure, '503', got), /^503 5\.5\.1 Error: need MAIL command\r\n$/, 'neither the transaction before TLS nor an injected MAIL holds');
  secure.write('STARTTLS\r\n');
  assert.match(await until(secure, '503', got), /^503 5\.5\.1 Error: TLS already active\r\n$/);
  secure.destroy();
});

// STARTTLS on a listener with `tls: { mode: none }` is refused (502 5.5.1, as Postfix), with its decision line.
// smtp-server only hid STARTTLS from the EHLO reply there and still answered it: `openssl s_client -starttls
// smtp` got TLSv1.3 with smtp-server's built-in certificate (CN=localhost, expired, its private key shipped with
// the package), and the message that followed was logged (`TLS established`) and stamped as encrypted.
// Real server, the real openssl client, and a line-level client for the reply.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

let s: TestServer;
before(async () => {
  s = await startTestServer({ config: configYaml({ localDomains: ['example.test'], listeners: [testListener('plain', { tls: { mode: 'none' } })] }) });
});
after(() => s?.stop());

const isDecision = (l: Record<string, unknown>): boolean => l.decision === 'reject' || l.decision === 'defer';

test('openssl s_client -starttls smtp gets no TLS from a listener without TLS', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const output = await new Promise<string>((resolve) => {
    const child = execFile('openssl', ['s_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${s.port('plain')}`, '-brief'], { timeout: 30_000 },
      (_err, stdout, stderr) => resolve(stdout + stderr));
    child.stdin!.end('QUIT\r\n');
  });
  assert.doesNotMatch(output, /CONNECTION ESTABLISHED|Protocol version: TLS/, output);
  await until('the refusal\'s line', () => s.logs.slice(mark).some(isDecision), { timeoutMs: 30_000 });
  assert.deepEqual(s.logs.slice(mark).filter((l) => l.msg === 'TLS established'), []);
});

test('STARTTLS there: 502 5.5.1, one decision line with its stage and the setting behind it; the session goes on in plain text', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const c = await SmtpTestClient.connect(s.port('plain'));
  await c.read();
  await c.command('EHLO client.example');
  assert.equal((await c.command('STARTTLS')).text, '502 5.5.1 Error: command not implemented');
  assert.equal((await c.command('NOOP')).code, 250, 'the connection stays in plain text');
  await c.quit();
  const lines = s.logs.slice(mark).filter(isDecision);
  assert.equal(lines.length, 1, JSON.stringify(lines));
  assert.deepEqual([lines[0]!.stage, lines[0]!.code, lines[0]!.enhanced, lines[0]!.reason, lines[0]!.client],
    ['STARTTLS', 502, '5.5.1', 'tls.mode: none (STARTTLS not offered on this listener)', '127.0.0.1']);
  assert.match(String(lines[0]!.msg), /^NOQUEUE: reject: STARTTLS from unknown\[127\.0\.0\.1\]: 502 5\.5\.1 Error: command not implemented; proto=ESMTP helo=<client\.example>$/);
});

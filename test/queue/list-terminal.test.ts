/**
 * `postern queue list` and `queue show` print each recipient's last error: the next hop's reply, whose text
 * whoever runs that host chose (any recipient domain's MX). Its control characters never reach the operator's
 * terminal: C1 ones included (U+009B is CSI to a terminal that takes C1 controls in UTF-8, as xterm does),
 * and the line separators U+2028/U+2029. Stored that way, the log line and the bounce carry none either.
 * `queue show` prints the envelope too: the client certificate's subject, which the client chose (any
 * certificate, on a listener that requests one), is shown with its controls escaped like the message's, and
 * kept at most 512 characters long (scripts of the SMTP hooks see it whole).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { configYaml, smarthostDelivery, testListener, testServerTls } from '../helpers/config.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startTestServer } from '../helpers/postern.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';
import { needs } from '../helpers/example.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
const HOSTILE = 'mailbox busy \u009b2J\u009b]0;owned\u0007 wiped\u2028line two\u0085three';
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]/;

let sink: Sink | undefined;
let s: DeliveryServer | undefined;
after(async () => {
  await s?.stop();
  await sink?.close();
});

test('a next hop\'s reply with terminal controls: queue list and show on a terminal show none of them', { ...needs('script'), timeout: 90_000 }, async () => {
  sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 450, text: `4.2.1 ${HOSTILE}` } : null) });
  s = await startDeliveryServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: { mode: 'none' } })], delivery: smarthostDelivery(sink.port, { scanIntervalMs: 100 }) }),
  });
  const id = await s.send('a@example.test', ['b@example.test']);
  const attempt = await s.nextAttempt((e) => e.id === id, { past: true, timeoutMs: 60_000 });
  const stored = attempt.outcomes[0]!.reply;
  assert.match(stored, /^450 4\.2\.1 mailbox busy [^]*wiped[^]*line two[^]*three$/, JSON.stringify(stored));
  assert.doesNotMatch(stored, CONTROL, `what is stored carries no control character: ${JSON.stringify(stored)}`);

  const config = join(s.dir, 'postern.yaml');
  for (const args of [['queue', 'list'], ['queue', 'show', id, '--envelope']]) {
    const command = [process.execPath, MAIN, ...args, '-c', config].map((a) => `'${a}'`).join(' ');
    const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }).toString('utf8');
    assert.match(onTerminal, /mailbox busy/, onTerminal);
    assert.doesNotMatch(onTerminal.replace(/\r\n/g, '\n'), CONTROL, `${args.join(' ')}: ${JSON.stringify(onTerminal)}`);
  }
});

/** The queue id of a message sent over STARTTLS with `device`'s certificate. */
async function queuedWithCertificate(port: number, pki: TestPki, device: { cert: string; key: string }): Promise<string> {
  const c = await SmtpTestClient.connect(port);
  await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key } });
  const r = await c.sendMail('a@example.test', ['b@example.test']);
  assert.equal(r.code, 250, r.text);
  await c.quit();
  return /queued as (\w+)/.exec(r.text)![1]!;
}

test('a client certificate whose subject carries C1 controls: queue show on a terminal shows none of them', { ...needs('script'), timeout: 90_000 }, async () => {
  const pki = await makeTestPki();
  const device = await createSelfSignedCertificate({ commonName: 'printer\u009b2J\u009b]0;owned\u0085 lobby' });
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: testServerTls(pki, { clientCertificates: 'request' }) })] }),
  });
  try {
    const id = await queuedWithCertificate(server.port('in'), pki, device);
    const command = [process.execPath, MAIN, 'queue', 'show', id, '--envelope', '-c', join(server.dir, 'postern.yaml')].map((a) => `'${a}'`).join(' ');
    const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }).toString('utf8');
    assert.match(onTerminal, /client_certificate: CN=printer.*lobby/, onTerminal);
    assert.doesNotMatch(onTerminal.replace(/\r\n/g, '\n'), CONTROL, JSON.stringify(onTerminal));
  } finally {
    await server.stop();
  }
});

test('an SMTPUTF8 recipient with bidi overrides and isolates: refused at RCPT; spooled by an earlier release, queue list on a terminal shows them escaped', { ...needs('script'), timeout: 90_000 }, async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: { mode: 'none' } })] }),
  });
  try {
    // U+202E shows "evil" backwards; U+2066 … U+2069 an isolate around it.
    const address = 'ceo\u202Elive\u202C\u2066x\u2069@example.test';
    const c = await SmtpTestClient.connect(server.port('in'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.test> SMTPUTF8')).code, 250);
    assert.equal((await c.command(`RCPT TO:<${address}>`)).code, 553, 'refused at the door (envelope-path.ts)');
    await c.quit();
    // Releases before that took it: such a message may still be in a spool.
    const id = server.runtime.spool.newId();
    const writer = server.runtime.spool.create(id);
    writer.write(Buffer.from('Subject: t\r\n\r\nhi\r\n'));
    const now = new Date().toISOString();
    await writer.commit({
      version: 1, id, receivedAt: now, sender: 'a@example.test', recipients: [{ address }], size: 0, smtputf8: true,
      session: { listener: 'in', remoteAddress: '127.0.0.1', helo: 'client.example', authenticatedUser: null, clientCertificate: null },
      attempts: 0, nextAttemptAt: new Date(Date.now() + 3_600_000).toISOString(), errors: [],
    });
    const command = [process.execPath, MAIN, 'queue', 'list', '-c', join(server.dir, 'postern.yaml')].map((a) => `'${a}'`).join(' ');
    const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }).toString('utf8');
    assert.match(onTerminal, /ceo<U\+202E>live<U\+202C><U\+2066>x<U\+2069>@example\.test/, onTerminal);
    assert.doesNotMatch(onTerminal, /[\u202a-\u202e\u2066-\u2069]/u, JSON.stringify(onTerminal));
  } finally {
    await server.stop();
  }
});

test('a 20,000-character certificate subject: scripts see it whole, the queued envelope keeps 512 characters and "..."', { timeout: 90_000 }, async () => {
  const pki = await makeTestPki();
  const name = `device-${'x'.repeat(20_000)}`;
  const device = await createSelfSignedCertificate({ commonName: name });
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: testServerTls(pki, { clientCertificates: 'request' }) })] }),
    scripts: { 'rcptto.ts': `export default (ctx: RcptToContext) => ctx.connection.clientCertificate?.subject.dn === ${JSON.stringify(`CN=${name}`)} ? undefined : reject('not the whole name');` },
  });
  try {
    const id = await queuedWithCertificate(server.port('in'), pki, device);
    const shown = execFileSync(process.execPath, [MAIN, 'queue', 'show', id, '--json', '-c', join(server.dir, 'postern.yaml')], { timeout: 30_000 }).toString('utf8');
    const { subject, issuer } = (JSON.parse(shown) as { session: { clientCertificate: { subject: string; issuer: string } } }).session.clientCertificate;
    assert.equal(subject, `CN=${name}`.slice(0, 512) + '...');
    assert.equal(issuer, subject, 'self-signed: the issuer is the subject, cut the same way');
  } finally {
    await server.stop();
  }
});

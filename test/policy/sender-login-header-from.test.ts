// Sender binding of the header (listener senderLogin, as mox does on submission): with `enforce`, the From:
// field's every address and a Sender: must belong to the login as MAIL FROM must — else a logged-in user (or a
// stolen laptop's certificate) sends `MAIL FROM:<alice@…>` with `From: ceo@…`, the address a reader sees and
// DKIM signs with the domain's key. Real server and client, a password login and a certificate autoLogin.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { needs, python, run } from '../helpers/example.ts';

let pki: TestPki;
let ca: string;
let server: TestServer;
const PASSWORD = 'alice-Secret-1';

function config(senderLogin: string): string {
  return `
localDomains: [example.com, bücher.example]
users: ./users
tables: { sender_logins: ./sender_logins }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    auth: { mechanisms: [PLAIN] }
    certificateIdentity: { field: emailAddress, autoLogin: true }
    senderLogin: ${senderLogin}
`;
}

const files = async (): Promise<Record<string, string>> => ({
  users: `alice@example.com:${await hashPassword(PASSWORD)}\n`,
  sender_logins: 'alice@example.com  info@example.com,@alice.example,Ålice@Bücher.example\n',
});

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({ config: config('{ enforce: true, table: sender_logins }'), files: await files() });
});
after(() => server?.stop());

async function passwordLogin(s: TestServer): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(s.port('sub'));
  await c.hello({ starttls: { ca } });
  const plain = Buffer.from(`\0alice@example.com\0${PASSWORD}`).toString('base64');
  assert.equal((await c.command(`AUTH PLAIN ${plain}`)).code, 235);
  return c;
}

/** The final reply to a message whose header section is `header` (CRLF-joined lines), from alice@example.com. */
async function send(c: SmtpTestClient, header: string[], sender = 'alice@example.com'): Promise<string> {
  const r = await c.sendMail(sender, ['bob@example.com'], [...header, 'Subject: hi', '', 'hello', ''].join('\r\n'));
  if (r.code !== 250) await c.command('RSET');
  return r.text;
}

const FORGED = (address: string): string => `550 5.7.1 <${address}>: From: header address rejected: not owned by user alice@example.com`;

test('password login: From: and Sender: must be addresses the login may use; each address of a list or group is checked', async () => {
  const c = await passwordLogin(server);
  const cases: Array<[string[], string | RegExp]> = [
    [['From: Alice <ALICE@Example.COM>'], /^250 2\.0\.0 Ok: queued as /],
    [['From: info@example.com'], /^250 /],
    [['From: anyone@alice.example', 'Sender: alice@example.com'], /^250 /],
    [['From: =?utf-8?q?Alice_=C3=85?= <alice@example.com>'], /^250 /],
    [['From: ålice@bücher.example'], /^250 /],
    [['From: =?utf-8?q?Alice_=C3=85?= <ålice@xn--bcher-kva.example>'], /^250 /],
    [['From: alice@example.com,', ' info@example.com', 'Sender: alice@example.com'], /^250 /],
    [['From: The CEO <ceo@example.com>'], FORGED('ceo@example.com')],
    [['From: ceo@example.com (alice@example.com)'], FORGED('ceo@example.com')],
    [['From: alice@example.com, ceo@example.com', 'Sender: alice@example.com'], FORGED('ceo@example.com')],
    [['From: team: alice@example.com, ceo@example.com;'], FORGED('ceo@example.com')],
    [['From: alice@example.com', 'Sender: ceo@example.com'], '550 5.7.1 <ceo@example.com>: Sender: header address rejected: not owned by user alice@example.com'],
    [['From: x@sub.alice.example'], FORGED('x@sub.alice.example')],
    [['From: ceo@Example.COM'], FORGED('ceo@Example.COM')],
    [['From: ceo(alice@example.com)@example.com'], FORGED('ceo@example.com')],
    [['From: "ceo"@example.com'], FORGED('ceo@example.com')],
    [['From: <@relay.example:ceo@example.com>'], FORGED('ceo@example.com')],
    // Where a lenient parser and a reader's client may take different addresses: every address-shaped word counts.
    [['From: <alice@example.com> ceo@example.com'], FORGED('ceo@example.com')],
    [['From: Alice <alice@example.com> <ceo@example.com>'], FORGED('ceo@example.com')],
    [['From: "ceo@example.com" <alice@example.com>'], FORGED('ceo@example.com')],
    [['From: "Alice (alice@example.com)" <alice@example.com>'], /^250 /],
    // RFC 2047 encoded-words show the reader what they encode (in a name, a comment, even a quoted string, as
    // mail clients decode them), and a fullwidth ＠ or ideographic full stop reads as @ and a dot.
    [['From: =?utf-8?q?ceo=40example.com?= <alice@example.com>'], FORGED('ceo@example.com')],
    [['From: =?UTF-8?B?Y2VvQGV4YW1wbGUuY29t?= <alice@example.com>'], FORGED('ceo@example.com')],
    [['From: =?utf-8?q?ceo?= =?utf-8?q?=40example.com?= <alice@example.com>'], FORGED('ceo@example.com')],
    [['From: alice@example.com (=?iso-8859-1?q?ceo=40example=2Ecom?=)'], FORGED('ceo@example.com')],
    [['From: "=?utf-8?q?CEO_=3Cceo=40example.com=3E?=" <alice@example.com>'], FORGED('ceo@example.com')],
    [['From: =?utf-7?q?ceo+AEA-example.com?= <alice@example.com>'], FORGED('ceo@example.com')],
    [['From: =?utf-8?q?=EF=BD=83=EF=BD=85=EF=BD=8F=EF=BC=A0example=E3=80=82com?= <alice@example.com>'], FORGED('ceo@example.com')],
    [['From: =?utf-8?q?ceo=40example.com?=@alice.example'], FORGED('=?utf-8?q?ceo=40example.com?=@alice.example')],
    [['From: =?utf-8?q?Alice_=28alice=40example.com=29?= <alice@example.com>'], /^250 /],
    // A group's name is shown too (RFC 6854 allows a group as the author).
    [['From: "ceo@example.com": alice@example.com;'], FORGED('ceo@example.com')],
    [['From: =?utf-8?q?ceo=40example.com?=: alice@example.com;'], FORGED('ceo@example.com')],
    [['From: team: alice@example.com;'], /^250 /],
    // A bidi override shows "moc.elpmaxe@oec" as ceo@example.com: a name with one is nobody's.
    [['From: =?utf-8?q?=E2=80=AEmoc.elpmaxe=40oec?= <alice@example.com>'], FORGED('?moc.elpmaxe@oec')],
    // Two @: example.com's to one reader, alice.example's (listed as @alice.example) to another.
    [['From: ceo@example.com@alice.example'], FORGED('ceo@example.com@alice.example')],
    [['Subject: no author'], '550 5.6.0 Message must have exactly one From: header field, not 0'],
    [['From: alice@example.com', 'FROM : ceo@example.com'], '550 5.6.0 Message must have exactly one From: header field, not 2'],
    [['From: undisclosed-recipients:;'], '550 5.6.0 Message From: header field names no address'],
    [['From: <>'], '550 5.6.0 Message From: header field names no address'],
  ];
  for (const [header, expected] of cases) {
    const text = await send(c, header);
    if (typeof expected === 'string') assert.equal(text, expected, header.join(' | '));
    else assert.match(text, expected, header.join(' | '));
  }
  await c.quit();
  const line = server.logs.find((l) => String(l.msg).includes('From: header address rejected'));
  assert.ok(line, 'a decision line for the refusal');
  assert.match(String(line.msg), /END-OF-MESSAGE|DATA/);
  assert.equal(line.user, 'alice@example.com');
});

test('a certificate autoLogin (no AUTH) is bound as a password login is', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: await clientTlsOptions(pki, 'alice') });
  assert.equal(await send(c, ['From: ceo@example.com']), FORGED('ceo@example.com'));
  assert.match(await send(c, ['From: alice@example.com']), /^250 /);
  await c.quit();
});

test('swaks with the laptop\'s certificate: its own From: passes, a colleague\'s is refused after the data', needs('swaks'), async () => {
  const swaks = (extra: string[]) => run('swaks', ['--server', '127.0.0.1', '--port', String(server.port('sub')), '--tls', '--tls-ca-path', pki.ca.cert,
    '--tls-cert', pki.clients.alice.cert, '--tls-key', pki.clients.alice.key, '--ehlo', 'laptop.example',
    '--from', 'alice@example.com', '--to', 'bob@example.com', ...extra]);
  const own = await swaks([]);
  assert.equal(own.code, 0, own.output);
  const forged = await swaks(['--header', 'From: The CEO <ceo@example.com>']);
  assert.notEqual(forged.code, 0, forged.output);
  assert.match(forged.stdout, /<~\* 550 5\.7\.1 <ceo@example\.com>: From: header address rejected: not owned by user alice@example\.com/);
});

// A real client's encoding: python's email package writes a non-ASCII display name as an RFC 2047 encoded-word,
// which every mail client decodes and shows. Before, the binding read only the encoded form, which holds no `@`.
test('python email + smtplib: a display name encoded by the client that shows a colleague\'s address is refused', async () => {
  const replies = await python<Array<[number, string]>>(`
import json, smtplib, ssl
from email.message import EmailMessage
from email.headerregistry import Address
ctx = ssl.create_default_context(cadata=${JSON.stringify(ca)})
out = []
for name in ('ceo\uff20example.com', 'Alice \u00c5ngstr\u00f6m'):
    m = EmailMessage()
    m['From'] = Address(display_name=name, addr_spec='alice@example.com')
    m['To'] = 'bob@example.com'
    m['Subject'] = 'hi'
    m.set_content('hello')
    s = smtplib.SMTP('127.0.0.1', ${server.port('sub')}, timeout=30)
    s.starttls(context=ctx)
    s.login('alice@example.com', ${JSON.stringify(PASSWORD)})
    try:
        s.send_message(m)
        out.append([250, 'sent'])
    except smtplib.SMTPDataError as e:
        out.append([e.smtp_code, e.smtp_error.decode()])
    s.quit()
print(json.dumps(out))
`);
  assert.deepEqual(replies, [[550, FORGED('ceo@example.com').slice(4)], [250, 'sent']]);
});

test('a From: after a line that is no field is body, not header: the message has no author and is refused', async () => {
  const c = await passwordLogin(server);
  assert.equal(await send(c, ['Subject: x', 'not a field', 'From: alice@example.com']), '550 5.6.0 Message must have exactly one From: header field, not 0');
  await c.quit();
});

test('not bound: a session that is not logged in (inbound), enforce off, headerFrom: false (envelope only, as Postfix)', async () => {
  const inbound = await SmtpTestClient.connect(server.port('sub'));
  await inbound.hello({ starttls: { ca } });
  assert.match(await send(inbound, ['From: ceo@example.com'], 'someone@example.net'), /^250 /);
  assert.match(await send(inbound, ['Subject: no From'], 'someone@example.net'), /^250 /);
  await inbound.quit();
  for (const senderLogin of ['{ enforce: true, table: sender_logins, headerFrom: false }', '{ enforce: false }']) {
    const s = await startTestServer({ config: config(senderLogin), files: await files() });
    try {
      const c = await passwordLogin(s);
      assert.match(await send(c, ['From: ceo@example.com']), /^250 /, senderLogin);
      assert.match(await send(c, ['Subject: no From']), /^250 /, senderLogin);
      if (senderLogin.includes('headerFrom')) assert.match(await send(c, ['From: alice@example.com'], 'ceo@example.com'), /^553 5\.7\.1 /, 'the envelope is still bound');
      await c.quit();
    } finally {
      await s.stop();
    }
  }
});

test('the data script runs only on a message the binding let through', async () => {
  const s = await startTestServer({
    config: config('{ enforce: true, table: sender_logins }'), files: await files(),
    scripts: { 'data.ts': `export default (ctx) => { log('data script ' + ctx.data.headers.find(([n]) => n === 'From')[1]); };` },
  });
  try {
    const c = await passwordLogin(s);
    assert.equal(await send(c, ['From: ceo@example.com']), FORGED('ceo@example.com'));
    assert.match(await send(c, ['From: info@example.com']), /^250 /);
    await c.quit();
    assert.deepEqual(s.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('data script ')), ['data script info@example.com']);
  } finally {
    await s.stop();
  }
});

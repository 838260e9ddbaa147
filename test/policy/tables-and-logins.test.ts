// Policy tables and sender login: address tables' keys, Postfix table continuation lines, sender login with IDN
// and the policy's verdicts. One file for what were several (one test process and one load of the engine instead of
// one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTable } from '../../engine/policy/lookup-tables.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { listPins, removePin } from '../../engine/pki/index.ts';
import { needs, run } from '../helpers/example.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { configYaml, testListener, testServerTls, type TestConfig } from '../helpers/config.ts';

describe('address-table-keys', () => {
  // A table keyed by client address finds the client however the key is spelled: an administrator copies
  // `::ffff:127.0.0.1` from `ss` on a dual-stack socket, or writes `0:0:0:0:0:0:0:1` or `2001:DB8::1`, while
  // scripts have the client as `127.0.0.1` and `::1` (one spelling, canonicalIp). Before, such a deny entry
  // matched no client. Real connections to a `[::]` listener, over IPv4 (mapped) and IPv6 loopback.
  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      config: `
localDomains: [example.com]
tables: { deny: ./deny }
listeners:
  - { name: mx, listen: '[::]:0', reverseDns: false, limits: { greetingDelayMs: 0 } }
`,
      files: { deny: '::FFFF:127.0.0.1  REJECT\n0:0:0:0:0:0:0:1  REJECT\n' },
      scripts: { 'mailfrom.ts': `export default (ctx) => lookup('deny', ctx.connection.remoteAddress) === 'REJECT' ? reject('denied ' + ctx.connection.remoteAddress) : accept();` },
    });
  });
  after(() => s?.stop());

  for (const host of ['127.0.0.1', '::1']) {
    test(`a client reaching [::] over ${host} is found under its table key in another spelling`, async () => {
      const c = await SmtpTestClient.connect(s.port('mx'), { host });
      try {
        await c.hello();
        assert.match((await c.command('MAIL FROM:<a@elsewhere.example>')).text, new RegExp(`^550 5\\.7\\.1 denied ${host.replace(/\./g, '\\.')}$`));
      } finally {
        await c.quit();
      }
    });
  }

  test('one address written twice in two spellings is a duplicate key, reported at the later line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-table-'));
    try {
      await writeFile(join(dir, 'deny'), '2001:db8::1 REJECT\n# the same client\n2001:DB8:0:0::1 OK\n');
      await assert.rejects(loadTable('deny', join(dir, 'deny')), /deny:3: duplicate key/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('postfix-table-continuation', () => {
  // A postfix-format table as postmap reads it: a line that starts with whitespace continues the entry before it
  // (comment and blank lines in between skipped), so a migrated smtpd_sender_login_maps with its long lists of
  // addresses loads unchanged. Before, every such table was refused ("no entry to continue", also when there
  // was one). Each key's value is compared with what Postfix's own postmap finds in the same file.
  let dir: string;
  let pki: TestPki;
  let server: TestServer;

  const senders = [
    '# sender login map, continued the Postfix way',
    'alice@example.com  alice@example.com,',
    '    sales@example.com,',
    '# a comment inside the entry',
    '',
    '\tinfo@example.com',
    'bob@example.com    bob@example.com',
    'carol@example.com',
    '   carol@example.com',
  ].join('\n') + '\n';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'postern-continuation-'));
    await writeFile(join(dir, 'main.cf'), ''); // postmap -c needs one
    await writeFile(join(dir, 'senders'), senders);
    pki = await makeTestPki();
    server = await startTestServer({
      files: {
        // The device's further senders on a continuation line.
        devices: `# device: laptop; added 2026-12-01\n${pki.clients.selfsigned.pinBase64Url} carol@example.com\n  sales@example.com\nkeep-me  other\n`,
      },
      config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { pins: devices, autoLogin: true }
    senderLogin: { enforce: true }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(async () => {
    await server?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('every key has the value postmap finds in the same file', needs('postmap'), async () => {
    const table = await loadTable('senders', join(dir, 'senders'));
    for (const key of ['alice@example.com', 'bob@example.com', 'carol@example.com', 'sales@example.com']) {
      const r = await run('postmap', ['-c', dir, '-q', key, `texthash:${join(dir, 'senders')}`]);
      const postfix = r.code === 0 ? r.stdout.replace(/\n$/, '') : null; // exit 1: not found
      assert.equal(table.get(key), postfix, key);
    }
    assert.equal(table.get('alice@example.com'), 'alice@example.com,    sales@example.com,\tinfo@example.com');
  });

  test('a continuation with no entry before it is still an error, at its line', async () => {
    await writeFile(join(dir, 'broken'), '# only a comment\n  continued\n');
    await assert.rejects(loadTable('broken', join(dir, 'broken')), { message: `${join(dir, 'broken')}:2: line starts with whitespace but there is no entry to continue` });
  });

  test('a table saved with a byte-order mark and CRLF lines (Windows Notepad) loads as the editor shows it', async () => {
    await writeFile(join(dir, 'notepad'), '\uFEFFalice@example.com alice@example.com\r\nbob@example.com bob@example.com\r\n');
    const table = await loadTable('notepad', join(dir, 'notepad'));
    assert.equal(table.get('alice@example.com'), 'alice@example.com');
    assert.equal(table.get('bob@example.com'), 'bob@example.com');
    for (const [format, text] of [['json', '{"alice@example.com": "alice@example.com"}'], ['yaml', 'alice@example.com: alice@example.com']] as const) {
      await writeFile(join(dir, `notepad.${format}`), `\uFEFF${text}\r\n`);
      const mapping = await loadTable(`notepad-${format}`, { file: join(dir, `notepad.${format}`), format, caseSensitive: false });
      assert.equal(mapping.get('alice@example.com'), 'alice@example.com', format);
    }
  });

  test('whitespace is postmap\'s: a line led by a no-break space is no continuation, but an error at its line', async () => {
    await writeFile(join(dir, 'pasted'), 'alice@example.com alice@example.com\n\u00A0mallory@example.com\n');
    await assert.rejects(loadTable('pasted', join(dir, 'pasted')), (err: Error) => err.message.startsWith(`${join(dir, 'pasted')}:2: expected "key value"`));
  });

  test('a pin line continued: the device may send as the sender on the next line; pins remove takes both lines', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: await clientTlsOptions(pki, 'selfsigned') });
    assert.equal((await c.command('MAIL FROM:<sales@example.com>')).code, 250);
    await c.quit();
    const file = join(server.dir, 'devices');
    assert.deepEqual((await listPins(file)).map((p) => [p.identity, p.senders, p.line, p.lastLine]), [['carol@example.com', ['sales@example.com'], 2, 3]]);
    await removePin(file, { identity: 'carol@example.com' });
    assert.equal(await readFile(file, 'utf8'), 'keep-me  other\n');
  });
});

describe('sender-login-idn', () => {
  // Sender binding with an IDN: the login, the table's entries and the MAIL FROM address are compared with their
  // domains by A-labels. An ASCII transaction carries `alice@xn--bcher-kva.example` (engine/smtp/envelope-path.ts),
  // an SMTPUTF8 one `alice@bücher.example`: both are alice@bücher.example's own address, whichever form the users
  // file and the table use; another domain is still refused.
  const PASSWORD = 'alice-Secret-1';
  let server: TestServer;
  let ca = '';

  before(async () => {
    const pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      config: `
localDomains: [bücher.example]
users: ./users
tables: { sender_logins: ./sender_logins }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN] }
    senderLogin: { enforce: true, table: sender_logins }
`,
      files: {
        users: `alice@bücher.example:${await hashPassword(PASSWORD)}\n`,
        sender_logins: 'alice@bücher.example  info@xn--mnchen-3ya.example,@Straße.example\n',
      },
    });
  });
  after(() => server?.stop());

  test('the own address, a listed address and a listed domain bind in A-labels and U-labels alike', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca } });
    const plain = Buffer.from(`\0alice@bücher.example\0${PASSWORD}`).toString('base64');
    assert.equal((await c.command(`AUTH PLAIN ${plain}`)).code, 235);
    const cases: Array<[string, number]> = [
      ['alice@xn--bcher-kva.example', 250],
      ['alice@bücher.example SMTPUTF8', 250],
      ['ALICE@XN--BCHER-KVA.EXAMPLE', 250],
      ['info@münchen.example SMTPUTF8', 250],
      ['info@xn--mnchen-3ya.example', 250],
      ['anyone@xn--strae-oqa.example', 250],
      ['anyone@straße.example SMTPUTF8', 250],
      ['alice@buecher.example', 553],
      ['other@münchen.example SMTPUTF8', 553],
    ];
    for (const [sender, code] of cases) {
      const [address, ...params] = sender.split(' ');
      const r = await c.command(`MAIL FROM:<${address}>${params.map((p) => ` ${p}`).join('')}`);
      assert.equal(r.code, code, `${sender}: ${r.text}`);
      await c.command('RSET');
    }
    await c.quit();
  });
});

describe('sender-login', () => {
  // Sender binding (listener senderLogin, Postfix reject_authenticated_sender_login_mismatch) with a real
  // server and client: the built-in decision, the mailfrom script that sees it and may override it, the null
  // sender option, unauthenticated sessions, and the configuration check of the table name.
  let pki: TestPki;
  let ca: string;
  let server: TestServer;
  const PASSWORD = 'alice-Secret-1';

  const plain = (user: string, password: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

  function config(senderLogin: string): string {
    return `
localDomains: [example.com]
users: ./users
tables: { sender_logins: ./sender_logins }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN] }
    senderLogin: ${senderLogin}
`;
  }

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      config: config('{ enforce: true, table: sender_logins }'),
      files: {
        users: `alice@example.com:${await hashPassword(PASSWORD)}\n`,
        sender_logins: 'alice@example.com  info@example.com,@alice.example\n',
      },
      scripts: {
        'mailfrom.ts': `
        export default (ctx) => {
          log('builtin ' + ctx.address.address + ' ' + ctx.builtin.accepted + ' ' + ctx.builtin.reason);
          if (ctx.address.address === 'boss@example.com') return accept();          // overrides a refusal
          if (ctx.address.address === 'info@example.com') return reject('not today'); // overrides an acceptance
        };`,
      },
    });
  });
  after(() => server.stop());

  async function client(login: boolean): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca } });
    if (login) assert.equal((await c.command(plain('alice@example.com', PASSWORD))).code, 235);
    return c;
  }

  async function mailFrom(c: SmtpTestClient, sender: string): Promise<string> {
    const r = await c.command(`MAIL FROM:<${sender}>`);
    await c.command('RSET');
    return r.text;
  }

  test('a logged-in user: its own address, table entries and @domain pass; others and <> get 553 5.7.1; the script sees the decision and its verdict wins', async () => {
    const c = await client(true);
    assert.equal(await mailFrom(c, 'Alice@Example.com'), '250 2.1.0 Accepted');
    assert.equal(await mailFrom(c, 'x@alice.example'), '250 2.1.0 Accepted');
    assert.equal(await mailFrom(c, 'ceo@bank.example'), '553 5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user alice@example.com');
    assert.equal(await mailFrom(c, 'x@sub.alice.example'), '553 5.7.1 <x@sub.alice.example>: Sender address rejected: not owned by user alice@example.com');
    assert.equal(await mailFrom(c, ''), '553 5.7.1 <>: Sender address rejected: null sender not allowed for user alice@example.com');
    assert.equal(await mailFrom(c, 'boss@example.com'), '250 2.1.0 Accepted', 'script accept() overrides the refusal');
    assert.equal(await mailFrom(c, 'info@example.com'), '550 5.7.1 not today', 'script reject() overrides the acceptance');
    await c.quit();
    const seen = server.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('builtin '));
    assert.deepEqual(seen, [
      'builtin Alice@Example.com true own-address',
      'builtin x@alice.example true listed',
      'builtin ceo@bank.example false sender-login-mismatch',
      'builtin x@sub.alice.example false sender-login-mismatch',
      'builtin  false null-sender',
      'builtin boss@example.com false sender-login-mismatch',
      'builtin info@example.com true listed',
    ]);
  });

  test('an unauthenticated session is not bound (inbound mail): any sender, builtin reason not-authenticated', async () => {
    const c = await client(false);
    assert.equal(await mailFrom(c, 'ceo@bank.example'), '250 2.1.0 Accepted');
    await c.quit();
    assert.equal(server.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('builtin ')).at(-1), 'builtin ceo@bank.example true not-authenticated');
  });

  test('allowNullSender: true lets a logged-in session use <>; enforce off binds nothing', async () => {
    const files = { users: `alice@example.com:${await hashPassword(PASSWORD)}\n`, sender_logins: '' };
    for (const [senderLogin, nullReply, otherReply] of [
      ['{ enforce: true, allowNullSender: true }', '250 2.1.0 Accepted', '553 5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user alice@example.com'],
      ['{}', '250 2.1.0 Accepted', '250 2.1.0 Accepted'],
    ] as const) {
      const s = await startTestServer({ config: config(senderLogin), files });
      try {
        const c = await SmtpTestClient.connect(s.port('sub'));
        await c.hello({ starttls: { ca } });
        assert.equal((await c.command(plain('alice@example.com', PASSWORD))).code, 235);
        assert.equal(await mailFrom(c, ''), nullReply, senderLogin);
        assert.equal(await mailFrom(c, 'ceo@bank.example'), otherReply, senderLogin);
        await c.quit();
      } finally {
        await s.stop();
      }
    }
  });

  test('senderLogin.table must name a table under tables', () => {
    assert.throws(() => parseConfig(`
listeners:
  - name: sub
    listen: 127.0.0.1:0
    senderLogin: { enforce: true, table: nope }
`, 'postern.yaml', '/tmp'), /postern\.yaml:5:\d+: listeners\[0\]\.senderLogin\.table: no table named "nope" under tables/);
  });

  test("the repository's default scripts/mailfrom.ts leaves the decision to senderLogin when it is enforced, and binds to the own address when not", async () => {
    const script = await readFile(new URL('../../scripts/mailfrom.ts', import.meta.url), 'utf8');
    const files = { users: `alice@example.com:${await hashPassword(PASSWORD)}\n`, sender_logins: 'alice@example.com  info@example.com\n' };
    for (const [senderLogin, listedReply] of [
      ['{ enforce: true, table: sender_logins }', '250 2.1.0 Accepted'],
      ['{}', '553 5.7.1 <info@example.com>: sender address not owned by alice@example.com'],
    ] as const) {
      const s = await startTestServer({ config: config(senderLogin), files, scripts: { 'mailfrom.ts': script } });
      try {
        const c = await SmtpTestClient.connect(s.port('sub'));
        await c.hello({ starttls: { ca } });
        assert.equal((await c.command(plain('alice@example.com', PASSWORD))).code, 235);
        assert.equal(await mailFrom(c, 'info@example.com'), listedReply, senderLogin);
        assert.equal(await mailFrom(c, 'alice@example.com'), '250 2.1.0 Accepted', senderLogin);
        assert.match(await mailFrom(c, 'ceo@bank.example'), /^553 5\.7\.1 <ceo@bank\.example>: [Ss]ender address /, senderLogin);
        await c.quit();
      } finally {
        await s.stop();
      }
    }
  });

  // An auth script that logs in a name of its own directory (accept() with the name as sent) may log in `\u212Aate`,
  // another user than kate there. The binding lowercased it to kate@example.com and let it send as kate; likewise a
  // header From `\u212Aate@…` passed for kate's. Lowercasing that makes ASCII out of what was not now keeps the case.
  // The repository's default scripts/mailfrom.ts (a listener without senderLogin.enforce) compared with toLowerCase() too.
  test('a login whose name lowercases into ASCII it did not have (U+212A KELVIN SIGN) does not own the ASCII address (senderLogin, and the default mailfrom.ts)', async () => {
    const defaultScript = await readFile(new URL('../../scripts/mailfrom.ts', import.meta.url), 'utf8');
    for (const [senderLogin, scripts, refusal] of [
      ['{ enforce: true }', {}, '553 5.7.1 <kate@example.com>: Sender address rejected: not owned by user ?ate@example.com'],
      ['{}', { 'mailfrom.ts': defaultScript }, '553 5.7.1 <kate@example.com>: sender address not owned by ?ate@example.com'],
    ] as const) {
    const s = await startTestServer({
      config: config(senderLogin),
      files: { users: `kate@example.com:${await hashPassword(PASSWORD)}\n`, sender_logins: '' },
      scripts: { ...scripts, 'auth.ts': `export default (ctx) => ctx.auth.username.startsWith('\\u212A') && ctx.auth.password === 'directory-pw' ? accept({ username: ctx.auth.username }) : undefined;` },
    });
    try {
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.hello({ starttls: { ca } });
      assert.equal((await c.command(plain('\u212Aate@example.com', 'directory-pw'))).code, 235);
      assert.equal(await mailFrom(c, 'kate@example.com'), refusal, senderLogin);
      await c.quit();
      const kate = await SmtpTestClient.connect(s.port('sub'));
      await kate.hello({ starttls: { ca } });
      assert.equal((await kate.command(plain('kate@example.com', PASSWORD))).code, 235);
      assert.equal(await mailFrom(kate, 'kate@example.com'), '250 2.1.0 Accepted', 'kate herself (the test can fail)');
      await kate.quit();
    } finally {
      await s.stop();
    }
    }
  });
});

describe('policy', () => {
  // Each context's verdicts and defaults, what scripts see, and fail-closed behaviour.
  let pki: TestPki;
  let ca: string;
  let alice: { cert: string; key: string };

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
  });

  function config(extra: Partial<TestConfig> = {}): string {
    return configYaml({
      localDomains: ['example.com'],
      sandbox: { timeoutMs: 1000, memoryLimitMb: 16, isolates: 2 },
      listeners: [testListener('mx', { tls: testServerTls(pki, { clientCertificates: 'request', crl: true }) })],
      ...extra,
    });
  }

  async function withServer(scripts: Record<string, string>, fn: (s: TestServer) => Promise<void>, extra?: Partial<TestConfig>): Promise<void> {
    const s = await startTestServer({ config: config(extra), scripts });
    try { await fn(s); } finally { await s.stop(); }
  }

  test('defaults without scripts: local domain accepted, relay denied 554 5.7.1, message spooled durably', async () => {
    await withServer({}, async (s) => {
      const c = await SmtpTestClient.connect(s.port('mx'));
      const ehlo = await c.hello();
      assert.match(ehlo.text, /ENHANCEDSTATUSCODES/);
      assert.match((await c.command('MAIL FROM:<a@elsewhere.example>')).text, /^250 2\.1\.0 /);
      assert.equal((await c.command('RCPT TO:<x@elsewhere.example>')).text, '554 5.7.1 <x@elsewhere.example>: Relay access denied');
      assert.match((await c.command('RCPT TO:<bob@example.com>')).text, /^250 2\.1\.5 /);
      assert.equal((await c.command('DATA')).code, 354);
      c.write('Subject: hi\r\n\r\nbody\r\n.');
      const r = await c.read();
      const id = /queued as ([0-9a-z]+)$/.exec(r.text)![1]!;
      const env = await s.runtime.spool.readEnvelope(id);
      assert.equal(env.sender, 'a@elsewhere.example');
      assert.deepEqual(env.recipients.map((x) => x.address), ['bob@example.com']);
      const msg = (await s.runtime.spool.readMessage(id)).toString('utf8');
      assert.match(msg, /^Received: from client\.example \(.*\[127\.0\.0\.1\]\)\r\n\tby localhost \(Postern\) with ESMTP id /);
      assert.match(msg, /\r\nSubject: hi\r\n\r\nbody\r\n$/);
      await c.quit();
    });
  });

  test('every context: reject with custom code/enhanced code/text, defer, disconnect', async () => {
    await withServer({
      'connect.ts': `export default (ctx) => ctx.connection.remotePort % 1 === 0 ? undefined : reject('x');`,
      'helo.ts': `export default (ctx) => ctx.helo.name === 'bad.example' ? reject('go away', { code: 550, enhanced: '5.7.1', disconnect: true }) : undefined;`,
      'mailfrom.ts': `export default (ctx) => ctx.address.domain === 'spam.example' ? reject('no spam', { code: 553, enhanced: '5.7.1' }) : ctx.address.localPart === 'later' ? defer('busy') : undefined;`,
      'rcptto.ts': `export default (ctx) => ctx.address.localPart === 'vip' ? accept({ text: 'VIP welcome' }) : ctx.address.localPart === 'nobody' ? reject('unknown user', { code: 550, enhanced: '5.1.1' }) : undefined;`,
      'data.ts': `export default (ctx) => ctx.data.headers.some(([n, v]) => n.toLowerCase() === 'subject' && v.includes('VIAGRA')) ? reject('content refused', { code: 554, enhanced: '5.7.1' }) : undefined;`,
    }, async (s) => {
      const bad = await SmtpTestClient.connect(s.port('mx'));
      await bad.read();
      assert.equal((await bad.command('EHLO bad.example')).text, '550 5.7.1 go away');
      assert.ok(await bad.waitClosed(), 'disconnect after reject');

      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<x@spam.example>')).text, '553 5.7.1 no spam');
      assert.match((await c.command('MAIL FROM:<later@ok.example>')).text, /^451 4\.3\.0 busy$/);
      assert.equal((await c.command('MAIL FROM:<me@ok.example>')).code, 250);
      assert.equal((await c.command('RCPT TO:<nobody@example.com>')).text, '550 5.1.1 unknown user');
      assert.equal((await c.command('RCPT TO:<vip@elsewhere.example>')).text, '250 2.1.5 VIP welcome', 'script accept overrides the relay rule');
      assert.equal((await c.command('DATA')).code, 354);
      c.write('Subject: cheap VIAGRA\r\n\r\nx\r\n.');
      assert.equal((await c.read()).text, '554 5.7.1 content refused');
      await c.quit();
      assert.deepEqual(await s.runtime.spool.list(), [], 'a refused message leaves nothing in the spool');
    });
  });

  test('a connect reject closes with 554; defer with disconnect is 421', async () => {
    await withServer({ 'connect.ts': `export default () => reject('not here');` }, async (s) => {
      const c = await SmtpTestClient.connect(s.port('mx'));
      assert.equal((await c.read()).text, '554 5.7.1 not here');
      assert.ok(await c.waitClosed());
    });
    await withServer({ 'connect.ts': `export default () => defer('maintenance', { disconnect: true });` }, async (s) => {
      const c = await SmtpTestClient.connect(s.port('mx'));
      assert.equal((await c.read()).text, '421 4.7.0 maintenance');
      assert.ok(await c.waitClosed());
    });
  });

  test('scripts see the connection, TLS and every certificate field', async () => {
    await withServer({
      'mailfrom.ts': `export default (ctx) => { log('CTX ' + JSON.stringify(ctx)); return reject('seen'); };`,
    }, async (s) => {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello({ name: 'laptop.example', starttls: { ca, ...alice } });
      const r = await c.command('MAIL FROM:<alice@example.com> SIZE=100 BODY=8BITMIME');
      assert.equal(r.text, '550 5.7.1 seen');
      const line = s.logs.find((l) => String(l.msg).startsWith('CTX '));
      const ctx = JSON.parse(String(line!.msg).slice(4));
      const conn = ctx.connection;
      assert.equal(conn.listener, 'mx');
      assert.equal(conn.helo, 'laptop.example');
      assert.equal(conn.remoteAddress, '127.0.0.1');
      assert.match(conn.tls.protocol, /^TLSv1\.[23]$/);
      assert.equal(conn.tls.sni, 'localhost');
      const cert = conn.clientCertificate;
      const fp = pki.clients.alice;
      assert.equal(cert.subject.CN, 'alice');
      assert.equal(cert.subject.O, 'Example');
      assert.equal(cert.subject.emailAddress, 'alice@example.com');
      assert.deepEqual(cert.san.email, ['alice@example.com']);
      assert.equal(cert.issuer.CN, 'Postern Test CA');
      assert.equal(cert.verified, true);
      assert.equal(cert.verifyError, null);
      assert.equal(cert.fingerprint.sha256, fp.fingerprintSha256);
      assert.equal(cert.pin.sha256, fp.pinSha256);
      assert.match(cert.fingerprint.sha1Colon, /^([0-9A-F]{2}:){19}[0-9A-F]{2}$/);
      assert.match(cert.pem, /^-----BEGIN CERTIFICATE-----/);
      assert.equal(ctx.address.localPart, 'alice');
      assert.equal(ctx.address.domain, 'example.com');
      assert.deepEqual(ctx.address.params, { SIZE: '100', BODY: '8BITMIME' });
      assert.match(ctx.transaction.id, /^[0-9a-z]+$/);
      await c.quit();
    });
  });

  test('the per-message hooks see the connection as it is now: a new EHLO name, AUTH and STARTTLS between transactions', async () => {
    const { hashPassword } = await import('../../engine/auth/password-hash.ts');
    const s = await startTestServer({
      files: { users: `bob@example.com:${await hashPassword('s3cret')}\n` },
      scripts: {
        'mailfrom.ts': `export default (ctx) => { const c = ctx.connection; return accept({ text: [c.helo, c.auth?.username ?? '-', c.tls?.mode ?? '-', c.clientCertificate?.subject.CN ?? '-'].join(' ') }); };`,
        'rcptto.ts': `export default (ctx) => accept({ text: ctx.connection.helo + ' ' + (ctx.connection.auth?.mechanism ?? '-') });`,
      },
      config: configYaml({
        users: './users',
        listeners: [testListener('sub', { tls: testServerTls(pki, { clientCertificates: 'request' }), auth: { mechanisms: ['PLAIN'] } })],
      }),
    });
    try {
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.hello({ name: 'one.example', starttls: { ca } });
      assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '250 2.1.0 one.example - starttls -');
      assert.equal((await c.command('RSET')).code, 250);
      assert.equal((await c.command('EHLO two.example')).code, 250);
      assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '250 2.1.0 two.example - starttls -');
      assert.equal((await c.command('RCPT TO:<y@example.com>')).text, '250 2.1.5 two.example -');
      const queued = async (): Promise<string> => {
        assert.equal((await c.command('DATA')).code, 354);
        const r = await c.command('Subject: x\r\n\r\nx\r\n.');
        const id = /queued as ([0-9a-z]+)$/.exec(r.text)?.[1];
        assert.ok(id, r.text);
        return (await s.runtime.spool.readMessage(id)).toString('utf8');
      };
      const before = await queued();
      assert.equal((await c.command(`AUTH PLAIN ${Buffer.from('\0bob@example.com\0s3cret').toString('base64')}`)).code, 235);
      assert.equal((await c.command('MAIL FROM:<x@example.com>')).text, '250 2.1.0 two.example bob@example.com starttls -');
      assert.equal((await c.command('RCPT TO:<y@example.com>')).text, '250 2.1.5 two.example PLAIN');
      const after = await queued();
      // The Received header too: built from the facts as they are at each message.
      assert.match(before, /^Received: from two\.example .*\r\n\t\(using TLSv1\.[23] with cipher [^)]+\)\r\n\t\(Client did not present a certificate\)\r\n\tby localhost \(Postern\) with ESMTPS id /);
      assert.match(after, /^Received: from two\.example .*\r\n\t\(using [^\r]+\r\n\t\(Client did not present a certificate\)\r\n\t\(Authenticated sender: bob@example\.com\)\r\n\tby localhost \(Postern\) with ESMTPSA id /);
      await c.quit();

      // STARTTLS resets the session (RFC 3207): the same connection's facts change wholesale.
      const t = await SmtpTestClient.connect(s.port('sub'));
      await t.hello({ name: 'plain.example' });
      assert.equal((await t.command('MAIL FROM:<x@example.com>')).text, '250 2.1.0 plain.example - - -');
      assert.equal((await t.command('RSET')).code, 250);
      await t.starttls({ ca, ...alice });
      assert.equal((await t.command('EHLO secure.example')).code, 250);
      assert.equal((await t.command('MAIL FROM:<x@example.com>')).text, '250 2.1.0 secure.example - starttls alice');
      await t.quit();
    } finally { await s.stop(); }
  });

  test('script throw, timeout and memory blow-up answer 451 4.3.0 while a parallel session completes', async () => {
    await withServer({
      'rcptto.ts': `
      export default (ctx) => {
        if (ctx.address.localPart === 'throw') throw new Error('boom');
        if (ctx.address.localPart === 'loop') { for (;;) {} }
        if (ctx.address.localPart === 'memory') { const a = []; for (;;) a.push(new Array(1e6).fill(1)); }
      };`,
    }, async (s) => {
      for (const what of ['throw', 'loop', 'memory', 'throw']) {
        const bad = await SmtpTestClient.connect(s.port('mx'));
        const good = await SmtpTestClient.connect(s.port('mx'));
        await bad.hello();
        await good.hello();
        await bad.command('MAIL FROM:<a@b.example>');
        bad.write(`RCPT TO:<${what}@example.com>`);
        const ok = await good.sendMail('a@b.example', ['fine@example.com']);
        assert.equal(ok.code, 250, `parallel session during ${what}: ${ok.text}`);
        const r = await bad.read(10_000);
        assert.match(r.text, /^451 4\.3\.0 /, what);
        await bad.quit();
        await good.quit();
      }
      const failures = s.logs.filter((l) => l.msg && String(l.msg).startsWith('policy script rcptto failed'));
      assert.ok(failures.some((l) => l.kind === 'error' && String(l.script).endsWith('rcptto.ts') && l.line === 3), JSON.stringify(failures[0]));
      assert.ok(failures.some((l) => l.kind === 'timeout'));
      assert.ok(failures.some((l) => l.kind === 'memory'));
    });
  });

  test('a failure is logged at the line where the script threw, whatever client text its message carries (a forged stack frame)', async () => {
    await withServer({
      'data.ts': 'export default async function (ctx) {\n  const body = await ctx.message.text();\n  if (!body.startsWith("ok")) throw new Error("unexpected body: " + body);\n}\n',
    }, async (s) => {
      const file = join(s.dir, 'scripts', 'data.ts');
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<a@b.example>')).code, 250);
      assert.equal((await c.command('RCPT TO:<x@example.com>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      // A body whose lines read like a stack frame of the script, at a line of the client's choosing.
      assert.match((await c.command(`Subject: x\r\n\r\nhello\r\n    at main (${file}:999:1)\r\nmore\r\n.`)).text, /^451 4\.3\.0 /);
      await c.quit();
      const failure = s.logs.find((l) => String(l.msg).startsWith('policy script data failed'));
      assert.equal(failure?.script, file);
      assert.deepEqual([failure?.line, failure?.column], [3, 37], String(failure?.msg));
    });
  });

  test('a promise the script left rejected fails the call, logged with the error\'s name and the line that made it', async () => {
    await withServer({
      'rcptto.ts': 'async function audit(address) {\n  await null;\n  throw new RangeError("audit failed for " + address);\n}\nexport default function (ctx) {\n  audit(ctx.address.address); // not awaited\n  return accept();\n}\n',
    }, async (s) => {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<a@b.example>')).code, 250);
      assert.match((await c.command('RCPT TO:<x@example.com>')).text, /^451 4\.3\.0 /);
      await c.quit();
      const failure = s.logs.find((l) => String(l.msg).startsWith('policy script rcptto failed'));
      assert.equal(failure?.err, 'RangeError: audit failed for x@example.com');
      assert.equal(failure?.script, join(s.dir, 'scripts', 'rcptto.ts'));
      assert.deepEqual([failure?.line, failure?.column], [3, 9], String(failure?.msg));
    });
  });

  test('concurrent sessions each get verdicts and log lines from their own facts (script calls of a turn share an isolate entry)', async () => {
    await withServer({
      'rcptto.ts': `export default (ctx) => {
      log('rcpt', ctx.connection.helo, ctx.address.localPart);
      if (ctx.address.localPart === 'throw') throw new Error('boom ' + ctx.connection.helo);
      return ctx.address.localPart === 'me'
        ? reject(ctx.connection.helo + ' ' + ctx.transaction.sender.localPart, { code: 550 })
        : undefined;
    };`,
    }, async (s) => {
      const n = 24;
      const clients = await Promise.all(Array.from({ length: n }, () => SmtpTestClient.connect(s.port('mx'))));
      await Promise.all(clients.map((c, i) => c.hello({ name: `host${i}.example` })));
      await Promise.all(clients.map((c, i) => c.command(`MAIL FROM:<sender${i}@b.example>`)));
      const rcpt = (i: number): string => (i % 3 === 0 ? 'throw' : i % 3 === 1 ? 'me' : 'fine');
      // Written all at once, so that the server reads them in the same turns and batches the script calls.
      for (const [i, c] of clients.entries()) c.write(`RCPT TO:<${rcpt(i)}@example.com>`);
      const replies = await Promise.all(clients.map((c) => c.read()));
      for (const [i, r] of replies.entries()) {
        const expected = { throw: /^451 4\.3\.0 /, me: new RegExp(`^550 5\\.7\\.1 host${i}\\.example sender${i}$`), fine: /^250 / }[rcpt(i)]!;
        assert.match(r.text, expected, `session ${i}`);
      }
      const lines = s.logs.filter((l) => String(l.msg).startsWith('rcpt '));
      assert.equal(lines.length, n);
      assert.equal(new Set(lines.map((l) => l.cid)).size, n, 'each session logged once, under its own id');
      // A failure is logged by the session itself: the script's line must carry the same connection id.
      const failures = s.logs.filter((l) => /^Error: boom /.test(String(l.err)));
      assert.equal(failures.length, n / 3);
      for (const f of failures) {
        const helo = String(f.err).slice('Error: boom '.length);
        assert.equal(lines.find((l) => l.msg === `rcpt ${helo} throw`)?.cid, f.cid, helo);
      }
      const stats = await s.runtime.generation.sandboxFor(s.config.config.listeners[0]).stats();
      console.log(`# ${stats.fastPath.calls} script calls in ${stats.fastPath.batches} entries into an isolate`);
      await Promise.all(clients.map((c) => c.quit()));
    });
  });

  test('a malformed verdict fails closed too', async () => {
    await withServer({ 'mailfrom.ts': `export default () => ({ verdict: 'maybe' });` }, async (s) => {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      assert.match((await c.command('MAIL FROM:<a@b.example>')).text, /^451 4\.3\.0 /);
      await c.quit();
    });
  });

  test('lookup tables and logging from scripts', async () => {
    const s = await startTestServer({
      config: config({ tables: { blocked: { file: './blocked' } } }),
      files: { blocked: '# senders\nspammer@bad.example   REJECT\n' },
      scripts: { 'mailfrom.ts': `export default (ctx) => { log('checking', ctx.address.address); if (lookup('blocked', ctx.address.address) === 'REJECT') return reject('blocked sender'); };` },
    });
    try {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<Spammer@BAD.example>')).text, '550 5.7.1 blocked sender');
      assert.equal((await c.command('MAIL FROM:<ok@good.example>')).code, 250);
      await c.quit();
      assert.ok(s.logs.some((l) => l.msg === 'checking ok@good.example' && typeof l.cid === 'string'), 'script log line with connection id');
    } finally { await s.stop(); }
  });

  test('greeting delay: a client talking during the pause gets 421 on inbound; submission has no pause', async () => {
    const s = await startTestServer({
      config: `
listeners:
  - { name: inbound, listen: "127.0.0.1:0", reverseDns: false, limits: { greetingDelayMs: 60000 } }
  - { name: submission, listen: "127.0.0.1:0", reverseDns: false, auth: { mechanisms: [PLAIN] } }
`,
    });
    // The pause is far longer than any test: talking at once is talking inside it, however slow the machine.
    const talk = async (port: number, afterGreeting: boolean): Promise<number[]> => {
      const c = await SmtpTestClient.connect(port);
      const codes = afterGreeting ? [(await c.read()).code] : [];
      c.write('EHLO eager.example');
      codes.push((await c.read()).code);
      c.destroy();
      return codes;
    };
    try {
      assert.deepEqual(await talk(s.port('inbound'), false), [421], 'inside the pause: early talker');
      assert.equal(s.servers.get('submission')!.greetingDelayMs, 0, 'no pause on submission');
      assert.deepEqual(await talk(s.port('submission'), true), [220, 250], 'greeted, then served');
    } finally { await s.stop(); }
  });
});

// Each context's verdicts and defaults, what scripts see, and fail-closed behaviour.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { configYaml, testListener, testServerTls, type TestConfig } from '../helpers/config.ts';

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

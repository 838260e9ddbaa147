/**
 * What a script author reads in scripts/postern.d.ts is what the script gets. The declared shape of each hook's
 * context is read from postern.d.ts with the TypeScript checker (so the test follows the typings as they change);
 * each hook's script walks its real `ctx` against it inside the sandbox, over real SMTP sessions of every kind
 * (no TLS, STARTTLS without and with a client certificate, implicit TLS, AUTH PLAIN, LOGIN and EXTERNAL, HELO and EHLO,
 * pipelined commands, a second transaction after RSET, twenty recipients, the null sender, an IDN domain in A-labels and in U-labels
 * under SMTPUTF8), Postfix policy requests, shadow scripts, and the queue's predelivery (a bounce's too). Any property missing, of another kind,
 * read-only where it is declared writable, or present without being declared is a failure.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { DTS_PATH } from '../../engine/sandbox/api/generate-dts.ts';
import type { HookName } from '../../engine/sandbox/api/index.ts';
import { HOOK_NAMES } from '../../engine/sandbox/index.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener, testServerTls } from '../helpers/config.ts';
import { SmtpTestClient, type Reply } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { PolicyClient, rcptRequest } from '../policy-service/helpers/policy-client.ts';
import { CONTEXT_TYPE, declaredShapes } from './helpers/declared-shapes.ts';
import { SHAPE_WALKER, shapeWalkingScript } from './helpers/shape-walker.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { startTestServer } from '../helpers/postern.ts';

const expectCode = async (c: SmtpTestClient, command: string, code: number): Promise<Reply> => {
  const r = await c.command(command);
  assert.equal(r.code, code, `${command}: ${r.text}`);
  return r;
};

/** DATA, the message, its 250. */
async function message(c: SmtpTestClient, text: string): Promise<void> {
  await expectCode(c, 'DATA', 354);
  c.write(`${text}\r\n.`);
  const r = await c.read();
  assert.equal(r.code, 250, r.text);
}

test('every hook\'s ctx, on every kind of session, has exactly the shape postern.d.ts declares', async () => {
  const shapes = declaredShapes(DTS_PATH, Object.values(CONTEXT_TYPE));
  const pki = await makeTestPki();
  // The next hop refuses one recipient for good: its bounce, from Postern itself, goes through predelivery too.
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address === 'refused@example.net' ? { code: 550, text: '5.1.1 No such user' } : null) });
  const tls = testServerTls(pki, { clientCertificates: 'request' });
  const s = await startDeliveryServer({
    scripts: Object.fromEntries(HOOK_NAMES.map((hook) => [`${hook}.js`, shapeWalkingScript(hook, shapes[CONTEXT_TYPE[hook]]!)])),
    files: {
      users: `bob@example.com:${await hashPassword('s3cret')}\n`,
      ...Object.fromEntries(HOOK_NAMES.filter((h) => h !== 'predelivery').map((hook) => [`shadow/${hook}.js`, shapeWalkingScript(hook, shapes[CONTEXT_TYPE[hook]]!, { tag: 'SHADOW' })])),
    },
    config: configYaml({
      users: './users',
      localDomains: ['example.com', 'bücher.example'],
      listeners: [
        // Shadow scripts (docs/authoring.md) see the live context: the same walk, tagged SHADOW.
        testListener('plain', { shadowScripts: './shadow' }),
        testListener('sub', { tls, auth: { mechanisms: ['EXTERNAL', 'PLAIN', 'LOGIN'] }, certificateIdentity: { field: 'emailAddress' } }),
        testListener('smtps', { tls: { ...tls, mode: 'implicit' }, certificateIdentity: { field: 'emailAddress' } }),
      ],
      delivery: smarthostDelivery(sink.port),
      policyServices: [{ name: 'postfix', listen: '127.0.0.1:0' }],
    }),
  });
  const [ca, aliceCert, aliceKey] = await Promise.all([pki.ca.cert, pki.clients.alice.cert, pki.clients.alice.key].map((f) => readFile(f, 'utf8')));
  const alice = { ca: ca!, cert: aliceCert!, key: aliceKey! };
  const sessions: string[] = [];
  try {
    // No TLS, no login: EHLO, one recipient.
    sessions.push('plain.test');
    let c = await SmtpTestClient.connect(s.port('plain'));
    await c.hello({ name: 'plain.test' });
    await expectCode(c, 'MAIL FROM:<someone@sender.example>', 250);
    await expectCode(c, 'RCPT TO:<user@example.com>', 250);
    await message(c, 'Subject: plain\r\n\r\nbody');
    await c.quit();

    // HELO (not EHLO) and the null sender.
    sessions.push('helo.test');
    c = await SmtpTestClient.connect(s.port('plain'));
    await c.read();
    await expectCode(c, 'HELO helo.test', 250);
    await expectCode(c, 'MAIL FROM:<>', 250);
    await expectCode(c, 'RCPT TO:<postmaster>', 250);
    await message(c, 'Subject: bounce\r\n\r\nbody');
    await c.quit();

    // STARTTLS without a certificate, AUTH PLAIN, a relayed and a local recipient.
    sessions.push('nocert.test');
    c = await SmtpTestClient.connect(s.port('sub'));
    await c.hello({ name: 'nocert.test', starttls: { ca: ca! } });
    await expectCode(c, `auth plain ${Buffer.from('\0bob@example.com\0s3cret').toString('base64')}`, 235); // the mechanism in any case
    await expectCode(c, 'MAIL FROM:<bob@example.com> SIZE=100 BODY=8BITMIME', 250);
    await expectCode(c, 'RCPT TO:<far@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;far@example.net', 250);
    await expectCode(c, 'RCPT TO:<user@example.com>', 250);
    await expectCode(c, 'RCPT TO:<refused@example.net>', 250);
    await message(c, 'Subject: relayed\r\nX-Two: a\r\n\r\nbody');
    await c.quit();

    // AUTH LOGIN, a relayed recipient only.
    sessions.push('login.test');
    c = await SmtpTestClient.connect(s.port('sub'));
    await c.hello({ name: 'login.test', starttls: { ca: ca! } });
    await expectCode(c, 'AUTH LOGIN', 334);
    await expectCode(c, Buffer.from('bob@example.com').toString('base64'), 334);
    await expectCode(c, Buffer.from('s3cret').toString('base64'), 235);
    await expectCode(c, 'MAIL FROM:<bob@example.com>', 250);
    await expectCode(c, 'RCPT TO:<far@example.net>', 250);
    await message(c, 'Subject: login\r\n\r\nbody');
    await c.quit();

    // STARTTLS with a client certificate, AUTH EXTERNAL.
    sessions.push('external.test');
    c = await SmtpTestClient.connect(s.port('sub'));
    await c.hello({ name: 'external.test', starttls: alice });
    await expectCode(c, 'AUTH EXTERNAL =', 235);
    await expectCode(c, 'MAIL FROM:<alice@example.com>', 250);
    await expectCode(c, 'RCPT TO:<far@example.net>', 250);
    await message(c, 'Subject: external\r\n\r\nbody');
    await c.quit();

    // Implicit TLS with a certificate, not logged in.
    sessions.push('implicit.test');
    c = await SmtpTestClient.connect(s.port('smtps'), { implicitTls: alice });
    await c.hello({ name: 'implicit.test' });
    await expectCode(c, 'MAIL FROM:<alice@example.com>', 250);
    await expectCode(c, 'RCPT TO:<user@example.com>', 250);
    await message(c, 'Subject: implicit\r\n\r\nbody');
    await c.quit();

    // Pipelined (RFC 2920): MAIL, two RCPTs and DATA in one write; then RSET and a second transaction.
    sessions.push('pipelined.test');
    c = await SmtpTestClient.connect(s.port('plain'));
    await c.hello({ name: 'pipelined.test' });
    c.socket.write('MAIL FROM:<one@sender.example>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n');
    assert.deepEqual([(await c.read()).code, (await c.read()).code, (await c.read()).code, (await c.read()).code], [250, 250, 250, 354]);
    c.write('Subject: first\r\n\r\nbody\r\n.');
    assert.equal((await c.read()).code, 250);
    await expectCode(c, 'MAIL FROM:<two@sender.example>', 250);
    await expectCode(c, 'RCPT TO:<c@example.com>', 250);
    await expectCode(c, 'RSET', 250);
    await expectCode(c, 'MAIL FROM:<three@sender.example>', 250);
    await expectCode(c, 'RCPT TO:<d@example.com>', 250);
    await message(c, 'Subject: second\r\n\r\nbody');
    await c.quit();

    // Recipients past 16: the isolate keeps the list, and ctx.transaction.recipients is a getter until read.
    sessions.push('many.test');
    c = await SmtpTestClient.connect(s.port('plain'));
    await c.hello({ name: 'many.test' });
    await expectCode(c, 'MAIL FROM:<many@sender.example>', 250);
    for (let i = 0; i < 20; i++) await expectCode(c, `RCPT TO:<r${i}@example.com>`, 250);
    await message(c, 'Subject: many\r\n\r\nbody');
    await c.quit();

    // An IDN domain in A-labels without SMTPUTF8; in U-labels, with a UTF-8 local part, under SMTPUTF8.
    sessions.push('idn.test');
    c = await SmtpTestClient.connect(s.port('plain'));
    await c.hello({ name: 'idn.test' });
    await expectCode(c, 'MAIL FROM:<someone@xn--bcher-kva.example>', 250);
    await expectCode(c, 'RCPT TO:<leser@xn--bcher-kva.example>', 250);
    await message(c, 'Subject: idn\r\n\r\nbody');
    await c.quit();
    sessions.push('utf8.test');
    c = await SmtpTestClient.connect(s.port('plain'));
    await c.hello({ name: 'utf8.test' });
    await expectCode(c, 'MAIL FROM:<josé@bücher.example> SMTPUTF8', 250);
    await expectCode(c, 'RCPT TO:<léser@bücher.example>', 250);
    await message(c, 'Subject: grüße\r\nFrom: José <josé@bücher.example>\r\n\r\nbody');
    await c.quit();

    // The same hooks asked by Postfix.
    sessions.push('postfix.test');
    const postfix = await PolicyClient.connect({ port: Number(s.policyAddresses.get('postfix')!.split(':').pop()) });
    const certificate = { ccert_subject: 'alice', ccert_issuer: 'Example CA', ccert_fingerprint: 'AB:'.repeat(31) + 'AB', ccert_pubkey_fingerprint: 'CD:'.repeat(31) + 'CD' };
    for (const [state, extra] of [['CONNECT', {}], ['EHLO', {}], ['MAIL', { sasl_method: 'PLAIN', sasl_username: 'alice' }], ['RCPT', certificate], ['DATA', { queue_id: '4XyZ1' }], ['END-OF-MESSAGE', { size: 1234 }]] as const) {
      assert.match(await postfix.ask(rcptRequest({ protocol_state: state, helo_name: 'postfix.test', ...extra })), /^action=/);
    }
    postfix.close();

    const lines = (): Array<{ hook: string; session: string; kind: string; text: string }> => s.logs.map((l) => String(l.msg))
      .filter((m) => m.startsWith('SHAPE '))
      .map((m) => {
        const [, hook, session, kind, ...text] = m.split(' ');
        return { hook: hook!, session: session!, kind: kind!, text: text.join(' ') };
      });
    const done = (): Set<string> => new Set(s.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('SHAPE ') && m.endsWith(' done')).map((m) => m.split(' ').slice(1, 3).join(' ')));
    // Every session ran each of its hooks (connect is labelled by port: it has no HELO name yet).
    const expected = [
      ...sessions.flatMap((session) => ['helo', 'mailfrom', 'rcptto', 'data'].map((hook) => `${hook} ${session}`)),
      ...sessions.filter((x) => x !== 'postfix.test').map((session) => `predelivery ${session}`),
      'predelivery null', // the bounce: no session, no HELO name
      'auth nocert.test', 'auth external.test', 'auth login.test',
    ];
    await until('every session\'s hooks ran, predelivery included', () => { const d = done(); return expected.every((x) => d.has(x)); }, { timeoutMs: 60_000 });
    const failures = new Map<string, Set<string>>();
    for (const { hook, session, kind, text } of lines()) {
      if (kind === 'problem') failures.set(`${hook}: ${text}`, (failures.get(`${hook}: ${text}`) ?? new Set()).add(session.startsWith('port-') ? 'connect' : session));
    }
    assert.deepEqual([...failures].map(([p, where]) => `${p} (${[...where].join(', ')})`), [], 'ctx differs from postern.d.ts');
    // The shadow scripts of the plain listener walked the same contexts and found nothing either.
    const shadow = (): string[] => s.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('SHADOW '));
    // Shadow calls run beside the live ones, and may end after them; one the shadow's isolates cannot take is
    // skipped (docs/authoring.md), so each hook is awaited in some session of the listener, not in each.
    await until('the shadow scripts ran', () => ['helo', 'mailfrom', 'rcptto', 'data'].every((hook) => shadow().some((m) => m.startsWith(`SHADOW ${hook} `) && m.endsWith(' done'))));
    assert.deepEqual(shadow().filter((m) => m.split(' ')[3] === 'problem'), [], 'a shadow script\'s ctx differs from postern.d.ts');
    // The sessions met each side of the unions they were meant to.
    const seen = new Set(lines().filter((l) => l.kind === 'met').map((l) => `${l.hook} ${l.text}`));
    for (const expected of [
      'connect ctx.connection.tls=null', 'connect ctx.connection.tls=TlsInfo', 'mailfrom ctx.connection.tls=TlsInfo',
      'mailfrom ctx.connection.clientCertificate=null', 'mailfrom ctx.connection.clientCertificate=PeerCertificate',
      'rcptto ctx.connection.clientCertificate=PostfixClientCertificate', 'mailfrom ctx.connection.auth=AuthInfo',
      'mailfrom ctx.connection.auth=null', 'rcptto ctx.transaction.sender=EnvelopeAddress', 'mailfrom ctx.transaction.sender=null',
      'predelivery ctx.session.clientCertificate=CertificateSummary', 'predelivery ctx.session.authenticatedUser=string',
      'predelivery ctx.session.authenticatedUser=null', 'data ctx.connection.certificateIdentity=string',
      'mailfrom ctx.address.params[key]=true', 'mailfrom ctx.address.params[key]=string',
      'auth ctx.auth.mechanism="PLAIN"', 'auth ctx.auth.mechanism="LOGIN"', 'auth ctx.auth.mechanism="EXTERNAL"',
      'auth ctx.builtin.reason="password"', 'auth ctx.builtin.reason="certificate-identity"',
      'rcptto ctx.builtin.reason="local-domain"', 'rcptto ctx.builtin.reason="authenticated"', 'rcptto ctx.builtin.reason="postmaster"',
    ]) assert.ok(seen.has(expected), `not met: ${expected} (met: ${[...seen].filter((x) => x.startsWith(expected.split('=')[0]!)).join(', ')})`);
    // `postfix` is there exactly when Postfix asked (docs: "Only from a Postfix policy service").
    for (const { hook, session, kind, text } of lines()) {
      if (kind !== 'met' || !text.startsWith('ctx.postfix=')) continue;
      assert.equal(text, session === 'postfix.test' ? 'ctx.postfix=present' : 'ctx.postfix=absent', `${hook} (${session})`);
    }
  } finally {
    await s.stop();
    await sink.close();
  }
});

/** Each helper call of the script below, by name: the declared type of what it gives (a postern type expression). */
const HELPER_RESULTS: Record<string, string> = {
  rate: 'RateResult',
  rateRefused: 'RateResult',
  counter: 'Counter',
  dns: 'Dns',
  counterAdd: 'Awaited<ReturnType<P.Counter["add"]>>',
  counterGet: 'Awaited<ReturnType<P.Counter["get"]>>',
  dnsA: 'P.DnsResult<string>',
  dnsTxt: 'P.DnsResult<string>',
  dnsMx: 'P.DnsResult<P.MxRecord>',
  dnsNxdomain: 'P.DnsResult<string>',
  dnsServfail: 'P.DnsResult<string>',
  dnsTimeout: 'P.DnsResult<string>',
  dnsblListed: 'DnsblResult',
  dnsblClean: 'DnsblResult',
  dnsblRefused: 'DnsblResult',
  lookupFound: 'ReturnType<P.PosternHelpers["lookup"]>',
  lookupMissing: 'ReturnType<P.PosternHelpers["lookup"]>',
  sha256: 'ReturnType<P.PosternHelpers["sha256"]>',
  hmac: 'ReturnType<P.PosternHelpers["hmac"]>',
  accept: 'AcceptVerdict',
  reject: 'RejectVerdict',
  defer: 'DeferVerdict',
  deliver: 'DeliverVerdict',
};

const HELPER_CALLS = `{
  rate: await rate('k', 1, 60),
  rateRefused: await rate('k', 1, 60),
  counter: counter('c'),
  dns,
  counterAdd: await counter('c').add(2, 60),
  counterGet: await counter('c').get(),
  dnsA: await dns.resolve('host.test', 'A'),
  dnsTxt: await dns.resolve('host.test', 'TXT'),
  dnsMx: await dns.resolve('host.test', 'MX'),
  dnsNxdomain: await dns.resolve('nothing.test', 'A'),
  dnsServfail: await dns.resolve('broken.test', 'A'),
  dnsTimeout: await dns.resolve('silent.test', 'A', { timeoutMs: 50 }),
  dnsblListed: await dnsbl('bl.test', '192.0.2.1'),
  dnsblClean: await dnsbl('bl.test', '192.0.2.2'),
  dnsblRefused: await dnsbl('bl.test', '192.0.2.3'),
  lookupFound: lookup('t', 'found'),
  lookupMissing: lookup('t', 'missing'),
  sha256: sha256('x'),
  hmac: hmac('sha256', 'k', 'x'),
  accept: accept({ text: 'ok' }),
  reject: reject('no', { code: 550 }),
  defer: defer('later', { disconnect: false }),
  deliver: deliver({ port: 25 }),
}`;

test('what each helper gives a script has the shape postern.d.ts declares for it', async () => {
  const shapes = declaredShapes(DTS_PATH, Object.values(HELPER_RESULTS));
  const dns = await startDnsServer({
    'host.test': [{ type: 'A', value: '192.0.2.9', ttl: 300 }, { type: 'TXT', value: ['v=spf1', ' -all'] }, { type: 'MX', value: { exchange: 'mx.host.test', priority: 10 } }],
    '1.2.0.192.bl.test': [{ type: 'A', value: '127.0.0.2' }],
    '3.2.0.192.bl.test': [{ type: 'A', value: '127.255.255.254' }],
  });
  dns.servfail.add('broken.test');
  dns.silent.add('silent.test');
  const script = `${SHAPE_WALKER}
const SHAPES = ${JSON.stringify(Object.fromEntries(Object.entries(HELPER_RESULTS).map(([name, type]) => [name, shapes[type]])))};
export default async function (ctx) {
  const results = ${HELPER_CALLS};
  for (const [name, value] of Object.entries(results)) {
    const problems = [];
    walk(value, SHAPES[name], name, problems, {});
    for (const p of problems) log('HELPER problem ' + p);
  }
  log('HELPER done ' + Object.keys(results).length);
}
`;
  const s = await startTestServer({
    files: { t: 'found value\n' },
    scripts: { 'rcptto.js': script },
    config: configYaml({ localDomains: ['example.com'], tables: { t: './t' }, dns: { servers: [dns.address], timeoutMs: 1000 }, sandbox: { timeoutMs: 5000 }, listeners: [testListener('in')] }),
  });
  try {
    const c = await SmtpTestClient.connect(s.port('in'));
    await c.hello({ name: 'helpers.test' });
    await expectCode(c, 'MAIL FROM:<someone@sender.example>', 250);
    await expectCode(c, 'RCPT TO:<user@example.com>', 250);
    await c.quit();
    const lines = s.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('HELPER '));
    assert.deepEqual(lines.filter((l) => !l.startsWith('HELPER done')), [], 'a helper gives other than postern.d.ts declares');
    assert.deepEqual(lines, [`HELPER done ${Object.keys(HELPER_RESULTS).length}`]);
  } finally {
    await s.stop();
    await dns.stop();
  }
});

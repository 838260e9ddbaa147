// `postern try` against the examples' own configurations and scripts, as an administrator runs it
// (node engine/cli/main.ts try …): the reply line a client would get, the exit code (0 accept, 1 reject,
// 2 defer, 3 script error, 4 held), the context the script saw, certificates verified in a real handshake with the
// listener's CA and CRL (a revoked one shows the revoked verdict), and a session file through every hook.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { copyExample, hashPassword } from '../helpers/example.ts';
import type { TestPki } from '../helpers/pki.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { readSessionFile } from '../../engine/try/session-file.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { tryCommand, type TryOptions } from '../../engine/cli/try.ts';


type Result = CliResult;

// Each case's first run is the real command line; its further variants call the command's function here
// (a process each, ~0.5 s of CPU mostly module loading, proves nothing more), with the command line's defaults.
const cli = (args: string[]): Promise<Result> => runCli(args);
const here = (hook: string | undefined, opts: TryOptions): Promise<Result> =>
  runInProcess(() => tryCommand(hook, { ip: '203.0.113.5', tls: true, ...opts }));

interface Json {
  outcome: string;
  exitCode: number;
  steps: Array<{ step: string; reply: string; outcome: string; logs: Array<{ msg: string }>; calls: Array<{ hook: string; script: boolean; context: Record<string, any>; verdict: unknown; failure: { kind: string; file?: string; line?: number } | null }> }>;
}
const json = (r: Result): Json => {
  try { return JSON.parse(r.stdout) as Json; } catch { throw new Error(`not JSON (exit ${r.code}):\n${r.stdout}\n${r.stderr}`); }
};
const last = (j: Json) => j.steps.at(-1)!;
const callOf = (j: Json, hook: string) => j.steps.flatMap((s) => s.calls).find((c) => c.hook === hook)!;

const colon = (hex: string): string => hex.toUpperCase().match(/../g)!.join(':');
const examples: Array<{ dir: string; pki: TestPki }> = [];
let relay: { dir: string; pki: TestPki; config: string };
let permit: { dir: string; pki: TestPki; config: string };
let halon: { dir: string; pki: TestPki; config: string };
let predelivery: { dir: string; pki: TestPki; config: string };
let laptop: { dir: string; pki: TestPki; config: string };
let implicit: { dir: string; pki: TestPki; config: string };
const prepared = async (name: string, append?: Parameters<typeof copyExample>[1], edit?: Parameters<typeof copyExample>[2]) => {
  const r = await copyExample(name, append, edit);
  examples.push(r);
  return { ...r, config: r.configPath };
};

before(async () => {
  relay = await prepared('postfix-relay-clientcerts', (pki) => ({ relay_clientcerts: `${colon(pki.clients.alice.fingerprintMd5)}   laptop.example.net` }));
  permit = await prepared('postfix-permit-tls-all-clientcerts', async () => ({ users: `carol@example.com:${await hashPassword('carol-secret')}` }));
  halon = await prepared('halon-auth-external', (pki) => ({ tls_fingerprints: `${pki.clients.alice.fingerprintSha1}   example.com` }));
  predelivery = await prepared('halon-predelivery-client-cert');
  laptop = await prepared('postfix-laptop-relay');
  // The same relay example on an implicit-TLS listener (port 465 style).
  implicit = await prepared('postfix-relay-clientcerts', (pki) => ({ relay_clientcerts: `${colon(pki.clients.alice.fingerprintMd5)}   laptop.example.net` }),
    (doc) => doc.setIn(['listeners', 0, 'tls', 'mode'], 'implicit'));
  // The outbound certificates these examples name, as their own tests install them.
  const a = predelivery.pki.clients.alice;
  for (const [file, from] of Object.entries({ 'example-com.crt': a.cert, 'example-com.key': a.key, 'example-org.crt': a.cert, 'example-org.key': a.key })) {
    await copyFile(from, join(predelivery.dir, 'pki', file));
  }
  await copyFile(laptop.pki.clients.alice.pem, join(laptop.dir, 'pki', 'laptop.pem'));
});
after(async () => { for (const e of examples) await rm(e.dir, { recursive: true, force: true }); });

const cert = (ex: { pki: TestPki }, name: 'alice' | 'bob' | 'revoked' | 'selfsigned' | 'expired') => ['--cert', ex.pki.clients[name].cert, '--key', ex.pki.clients[name].key];
const certOpts = (ex: { pki: TestPki }, name: 'alice' | 'bob') => ({ cert: ex.pki.clients[name].cert, key: ex.pki.clients[name].key });

test('rcptto (postfix-relay-clientcerts): a listed certificate relays, exit 0; an unlisted one gets the script\'s 554, exit 1', async () => {
  const ok = await cli(['try', 'rcptto', '-c', relay.config, ...cert(relay, 'alice'), '--from', 'me@example.net', '--to', 'r@elsewhere.example']);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.match(ok.stdout, /^< 250 2\.1\.5 Accepted$/m);
  assert.match(ok.stdout, /^ {2}script rcptto \(/m);
  assert.match(ok.stdout, /^ {2}verdict: \{"verdict":"accept"\}$/m);
  assert.match(ok.stdout, /^outcome: accept \(exit 0\)$/m);

  const no = await here('rcptto', { config: relay.config, ...certOpts(relay, 'bob'), from: 'me@example.net', to: ['r@elsewhere.example'], json: true });
  assert.equal(no.code, 1, no.stderr);
  const j = json(no);
  assert.equal(last(j).reply, '554 5.7.1 <r@elsewhere.example>: Relay access denied');
  const c = callOf(j, 'rcptto');
  assert.equal(c.script, true);
  assert.equal(c.context.connection.clientCertificate.fingerprint.sha256, relay.pki.clients.bob.fingerprintSha256);
  assert.equal(c.context.connection.remoteAddress, '203.0.113.5');
  assert.equal(c.context.connection.tls.mode, 'starttls');
  assert.deepEqual(c.context.builtin, { accepted: false, reason: 'relay-denied' });
  assert.deepEqual(c.verdict, { verdict: 'reject', text: '<r@elsewhere.example>: Relay access denied', code: 554, enhanced: '5.7.1' });
});

test('a revoked certificate shows the revoked verdict (CA and CRL of the listener) and is not let relay', async () => {
  // Text output, read as a person reads it: the RCPT step says no script ran, then shows its context and the reply.
  const r = await cli(['try', 'rcptto', '-c', permit.config, ...cert(permit, 'revoked'), '--from', 'me@example.com', '--to', 'r@elsewhere.example']);
  assert.equal(r.code, 1, r.stderr);
  const step = /^> RCPT TO:<r@elsewhere\.example>\n {2}no rcptto script: the built-in rules decide\n {2}context: (\{\n[^]*?\n {2}\})\n< (.*)$/m.exec(r.stdout);
  assert.ok(step, r.stdout); // no script in this example: the built-in relay rule decides
  const context = JSON.parse(step[1]!);
  assert.deepEqual([context.connection.clientCertificate.verified, context.connection.clientCertificate.verifyError, context.connection.clientCertificate.verifyErrorCode],
    [false, 'revoked', 'CERT_REVOKED']);
  assert.equal(step[2], '554 5.7.1 <r@elsewhere.example>: Relay access denied');
  assert.match(r.stdout, /^outcome: reject \(exit 1\)$/m);
  // The same listener, a valid certificate of its CA: verified, and permit_tls_all_clientcerts relays.
  const ok = await here('rcptto', { config: permit.config, ...certOpts(permit, 'alice'), from: 'me@example.com', to: ['r@elsewhere.example'], json: true });
  assert.equal(ok.code, 0, ok.stderr);
  const okCall = callOf(json(ok), 'rcptto');
  assert.equal(okCall.context.connection.clientCertificate.verified, true);
  assert.deepEqual(okCall.context.builtin, { accepted: true, reason: 'client-certificate' });
  assert.equal(last(json(ok)).reply, '250 2.1.5 Accepted');
});

test('auth with a password (postfix-permit-tls-all-clientcerts): the built-in rule and the users file decide; a wrong password is 535, exit 1', async () => {
  // One run for the AUTH and the relay after it (--password-file's test below runs `try auth` itself).
  const ok = await cli(['try', 'rcptto', '-c', permit.config, '--user', 'carol@example.com', '--password', 'carol-secret', '--from', 'carol@example.com', '--to', 'x@elsewhere.example', '--json']);
  const j = json(ok);
  assert.equal(j.steps.find((s) => s.step === 'auth')!.reply, '235 2.7.0 Authentication successful');
  assert.deepEqual(callOf(j, 'auth').context.builtin, { accepted: true, username: 'carol@example.com', reason: 'password' });
  assert.equal(callOf(j, 'auth').context.auth.password, '********', 'the password the script saw is not printed');
  assert.ok(!ok.stdout.includes('carol-secret'));
  const bad = await here('auth', { config: permit.config, user: 'carol@example.com', password: 'wrong' });
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /^< 535 5\.7\.8 Authentication credentials invalid$/m);
  assert.doesNotMatch(bad.stdout, /^> AUTH .*wrong/m, 'the command line shown hides the password');
  // Logged in, the relay rule lets an authenticated session relay.
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.equal(last(j).reply, '250 2.1.5 Accepted');
});

test('auth with --password-file (a file, or - for stdin): the password stays out of the command line, which every local user reads in ps', async () => {
  const file = join(permit.dir, 'carol.password');
  await writeFile(join(permit.dir, 'carol.password'), 'carol-secret\nignored second line\n', { mode: 0o600 });
  const ok = await cli(['try', 'auth', '-c', permit.config, '--user', 'carol@example.com', '--password-file', file, '--json']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(last(json(ok)).reply, '235 2.7.0 Authentication successful');
  const stdin = await runCli(['try', 'auth', '-c', permit.config, '--user', 'carol@example.com', '--password-file', '-'], { input: 'wrong\n' });
  assert.equal(stdin.code, 1, stdin.stderr);
  assert.match(stdin.stdout, /^< 535 5\.7\.8 Authentication credentials invalid$/m);
  const both = await here('auth', { config: permit.config, user: 'carol@example.com', password: 'x', passwordFile: file });
  assert.equal(both.code, 3);
  assert.match(both.stderr, /--password or --password-file, not both/);
});

test('implicit TLS: the handshake comes before connect, whose context has the certificate; no STARTTLS step', async () => {
  // One run: its connect step is the one `try connect` stops after.
  const rcpt = await cli(['try', 'rcptto', '-c', implicit.config, ...cert(implicit, 'alice'), '--from', 'me@example.net', '--to', 'r@elsewhere.example', '--json']);
  assert.equal(rcpt.code, 0, rcpt.stderr);
  const c = callOf(json(rcpt), 'connect');
  assert.equal(c.context.connection.tls.mode, 'implicit');
  assert.match(c.context.connection.tls.protocol, /^TLSv1\.[23]$/);
  assert.equal(c.context.connection.clientCertificate.fingerprint.sha256, implicit.pki.clients.alice.fingerprintSha256);
  assert.deepEqual(json(rcpt).steps.map((s) => s.step), ['connect', 'helo', 'mailfrom', 'rcptto']);
});

test('requireTls and built-in refusals before the hook: --no-tls stops at MAIL FROM with the catalogue reply', async () => {
  const text = await cli(['try', 'rcptto', '-c', permit.config, '--no-tls', '--from', 'me@example.com', '--to', 'r@example.com']);
  assert.equal(text.code, 1, text.stderr);
  // The last step is MAIL FROM, and its reply the last line of the session.
  assert.match(text.stdout, /^> MAIL FROM:<me@example\.com>\n< 530 5\.7\.0 Must issue a STARTTLS command first\n(?![^]*^[<>] )/m);
  assert.match(text.stdout, /^\(the rcptto hook was not reached: the session stopped at mailfrom\)$/m);
  // What the hooks before it saw is shown, so the reason can be read (here: no TLS, no certificate).
  assert.match(text.stdout, /^> EHLO [^]*?^ {2}context: \{[^]*?"tls": null/m);
});

test('auth and mailfrom (halon-auth-external): AUTH EXTERNAL by fingerprint, the sender domain bound to the certificate', async () => {
  // One run for alice's AUTH and the sender after it.
  const good = await cli(['try', 'mailfrom', '-c', halon.config, ...cert(halon, 'alice'), '--mechanism', 'EXTERNAL', '--from', 'alice@example.com', '--json']);
  assert.equal(good.code, 0, good.stdout + good.stderr);
  const aj = json(good);
  assert.equal(aj.steps.find((s) => s.step === 'auth')!.reply, '235 2.7.0 Authentication successful');
  assert.deepEqual(callOf(aj, 'auth').verdict, { verdict: 'accept', username: 'alice' });
  assert.equal(callOf(aj, 'auth').context.auth.mechanism, 'EXTERNAL');
  assert.equal(last(aj).reply, '250 2.1.0 Accepted');

  // `try auth` with a certificate and no --mechanism: EXTERNAL.
  const unknown = await here('auth', { config: halon.config, ...certOpts(halon, 'bob'), json: true });
  assert.equal(unknown.code, 1);
  assert.equal(last(json(unknown)).reply, '535 5.7.8 Authentication credentials invalid');
  assert.equal(callOf(json(unknown), 'auth').context.auth.mechanism, 'EXTERNAL');

  const bad = await here('mailfrom', { config: halon.config, ...certOpts(halon, 'alice'), mechanism: 'EXTERNAL', from: 'alice@example.org' });
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /^< 550 5\.7\.1 No valid X\.509 client certificate for example\.org$/m);
});

test('predelivery (halon-predelivery-client-cert): a known sender domain delivers with its certificate, an unknown one defers (exit 2)', async () => {
  const known = await cli(['try', 'predelivery', '-c', predelivery.config, '--from', 'a@example.com', '--to', 'b@remote.example', '--json']);
  assert.equal(known.code, 0, known.stderr);
  const kj = json(known);
  assert.equal(last(kj).reply, 'deliver to relay.example.net:25 tls={"clientCertificate":"example-com"}');
  assert.equal(callOf(kj, 'predelivery').context.destination.kind, 'smarthost');
  assert.equal(callOf(kj, 'predelivery').context.session.remoteAddress, '203.0.113.5');
  const unknown = await here('predelivery', { config: predelivery.config, from: 'a@unknown.example', to: ['b@remote.example'] });
  assert.equal(unknown.code, 2, unknown.stderr);
  assert.match(unknown.stdout, /^< 451 4\.7\.0 No client certificate for sender domain unknown\.example$/m);
});

test('rcptto (postfix-laptop-relay): --ip decides; the loopback address relays, another gets the built-in 554', async () => {
  const local = await cli(['try', 'rcptto', '-c', laptop.config, '--ip', '127.0.0.1', '--to', 'x@elsewhere.example']);
  assert.equal(local.code, 0, local.stdout + local.stderr);
  const remote = await here('rcptto', { config: laptop.config, ip: '198.51.100.7', to: ['x@elsewhere.example'] });
  assert.equal(remote.code, 1);
  assert.match(remote.stdout, /^ {2}verdict: none \(the built-in rule decides\)$/m);
  assert.match(remote.stdout, /^< 554 5\.7\.1 <x@elsewhere\.example>: Relay access denied$/m);
  // The address as a listener would name that client: scripts and the built-in rule see one spelling.
  const mapped = await here('rcptto', { config: laptop.config, ip: '0:0:0:0:0:FFFF:7F00:1', to: ['x@elsewhere.example'], json: true });
  assert.equal(mapped.code, 0, mapped.stdout + mapped.stderr);
  assert.equal(callOf(json(mapped), 'rcptto').context.connection.remoteAddress, '127.0.0.1');
});

/** Scripts for the hooks no example has (connect, helo, data), and one that throws. */
async function extraScripts(dir: string): Promise<string> {
  const scripts = join(dir, 'try-scripts');
  await mkdir(scripts, { recursive: true });
  await writeFile(join(scripts, 'connect.ts'), `export default function (ctx) {
  if (ctx.connection.remoteAddress.startsWith('192.0.2.')) return reject('No mail from documentation space', { code: 554 });
}\n`);
  await writeFile(join(scripts, 'helo.ts'), `export default function (ctx) {
  log('helo ' + ctx.helo.name);
  if (ctx.helo.name === 'localhost') return defer('Say who you are', { code: 450, enhanced: '4.7.1' });
}\n`);
  await writeFile(join(scripts, 'data.ts'), `export default function (ctx) {
  const subject = ctx.data.headers.find(([k]) => k.toLowerCase() === 'subject')?.[1] ?? '';
  if (subject.includes('viagra')) return reject('Spam');
  if (subject.includes('invoice')) return accept({ text: 'Thanks', hold: 'looks like an invoice' });
  return accept({ text: 'Thanks' });
}\n`);
  await writeFile(join(scripts, 'rcptto.ts'), `export default function (ctx) {
  if (ctx.connection.remoteAddress === '127.0.0.1') return accept();
}\n`);
  await writeFile(join(scripts, 'mailfrom.ts'), `export default function (ctx) {
  if (ctx.address.address === 'boom@example.com') throw new Error('boom');
}\n`);
  return scripts;
}

test('connect, helo, data and a script error, with --scripts: reply lines, logs and exit codes 0/1/2/3', async () => {
  const scripts = await extraScripts(laptop.dir);
  const base = ['-c', laptop.config, '--scripts', scripts, '--ip', '127.0.0.1'];
  const opts = { config: laptop.config, scripts, ip: '127.0.0.1' };
  const connect = await cli(['try', 'connect', ...base, '--ip', '192.0.2.1']);
  assert.equal(connect.code, 1, connect.stderr);
  assert.match(connect.stdout, /^< 554 5\.7\.1 No mail from documentation space$/m);

  const helo = await here('helo', { ...opts, helo: 'localhost' });
  assert.equal(helo.code, 2);
  assert.match(helo.stdout, /^ {2}log info \S*helo\.ts: helo localhost$/m);
  assert.match(helo.stdout, /^< 450 4\.7\.1 Say who you are$/m);

  const data = await here('data', { ...opts, helo: 'laptop', from: 'a@example.com', to: ['b@elsewhere.example'], header: ['Subject: cheap viagra'], json: true });
  assert.equal(data.code, 1, data.stderr);
  const dj = json(data);
  assert.equal(last(dj).reply, '550 5.7.1 Spam');
  assert.ok(callOf(dj, 'data').context.data.headers.some(([k, v]: [string, string]) => k.toLowerCase() === 'subject' && v.includes('cheap viagra')));
  const fine = await here('data', { ...opts, helo: 'laptop', from: 'a@example.com', to: ['b@elsewhere.example'], header: ['Subject: hello'] });
  assert.equal(fine.code, 0);
  assert.match(fine.stdout, /^< 220 laptop\.example\.net ESMTP Postern$/m, 'the connect script lets 127.0.0.1 in: the greeting');
  assert.match(fine.stdout, /^< 250 2\.0\.0 Thanks: queued as \w+$/m);

  const boom = await here('mailfrom', { ...opts, helo: 'laptop', from: 'boom@example.com', json: true });
  assert.equal(boom.code, 3, boom.stderr);
  const bj = json(boom);
  assert.equal(last(bj).reply, '451 4.3.0 Temporary policy failure, try again later');
  const failure = callOf(bj, 'mailfrom').failure!;
  assert.equal(failure.file, join(scripts, 'mailfrom.ts'));
  assert.equal(failure.line, 2);
});

test('data held by its script (accept with hold): outcome hold, exit 4, the hold under the 250; not a plain accept', async () => {
  const scripts = await extraScripts(laptop.dir);
  const args = ['try', 'data', '-c', laptop.config, '--scripts', scripts, '--ip', '127.0.0.1', '--helo', 'laptop', '--from', 'a@example.com', '--to', 'b@elsewhere.example', '--header', 'Subject: your invoice'];
  const held = await cli(args);
  assert.equal(held.code, 4, held.stdout + held.stderr);
  assert.match(held.stdout, /^< 250 2\.0\.0 Thanks: queued as \w+\n {2}held: by script \S*data\.ts: looks like an invoice \(not delivered until postern queue release\)$/m);
  assert.match(held.stdout, /^outcome: hold \(exit 4\)$/m);
  const j = json(await here('data', { config: laptop.config, scripts, ip: '127.0.0.1', helo: 'laptop', from: 'a@example.com', to: ['b@elsewhere.example'], header: ['Subject: your invoice'], json: true }));
  assert.deepEqual([j.outcome, j.exitCode, last(j).outcome, (last(j) as { held?: { reason: string } }).held?.reason], ['hold', 4, 'hold', 'looks like an invoice']);
  // A session file: the held message does not end the session, and a later refusal is still the outcome. Its
  // PREDELIVERY says it is not delivered until released (it showed "deliver to …"), and what the release would do.
  const session = join(laptop.dir, 'held-session.txt');
  await writeFile(session, 'EHLO laptop\nMAIL FROM:<a@example.com>\nRCPT TO:<b@elsewhere.example>\nDATA\nSubject: invoice\n\nx\n.\nPREDELIVERY\nMAIL FROM:<a@example.com>\nRCPT TO:<b@elsewhere.example>\nDATA\nSubject: viagra\n\nx\n.\n');
  const both = json(await here(undefined, { session, config: laptop.config, scripts, ip: '127.0.0.1', json: true }));
  assert.deepEqual(both.steps.filter((s) => s.step === 'data').map((s) => s.outcome), ['hold', 'reject']);
  const releasedLater = both.steps.find((s) => s.step === 'predelivery')!;
  assert.equal(releasedLater.outcome, 'hold');
  assert.match(releasedLater.reply, /^on hold, not delivered until postern queue release \w+; once released: deliver to \S+:\d+/);
  assert.equal((releasedLater as { held?: { reason: string } }).held?.reason, 'looks like an invoice');
  assert.deepEqual([both.outcome, both.exitCode], ['reject', 1]);
});

test('addresses in the form the listener gives them: a quoted local part unquoted or refused, a bare postmaster rewritten, A-labels kept', async () => {
  // One run, one --to each: a refused RCPT TO does not end the transaction, each gets its own step.
  const tos = ['"b"@elsewhere.example', '"b c"@elsewhere.example', 'postmaster', 'b@xn--bcher-kva.example'];
  const r = await cli(['try', 'rcptto', '-c', laptop.config, '--ip', '127.0.0.1', '--helo', 'laptop', '--from', 'a@example.com', '--json', ...tos.flatMap((to) => ['--to', to])]);
  const steps = json(r).steps.filter((s) => s.step === 'rcptto');
  assert.equal(steps.length, 4);
  const rcpt = steps.map((s) => ({ outcome: s.outcome, reply: s.reply, address: s.calls.find((c) => c.hook === 'rcptto')?.context.address.address }));
  assert.equal(rcpt[0]!.address, 'b@elsewhere.example');
  assert.equal(rcpt[1]!.outcome, 'reject');
  assert.equal(r.code, 1, 'the refused one is the outcome');
  assert.match(rcpt[1]!.reply, /^553 5\.1\.3 /);
  assert.match(rcpt[2]!.address ?? '', /^postmaster@/);
  assert.equal(rcpt[3]!.address, 'b@xn--bcher-kva.example');
  assert.deepEqual([rcpt[0]!.outcome, rcpt[2]!.outcome, rcpt[3]!.outcome], ['accept', 'accept', 'accept']);
});

test('--session: a whole session through every hook in order, like exim -bh', async () => {
  const scripts = await extraScripts(laptop.dir);
  const session = join(laptop.dir, 'session.txt');
  await writeFile(session, [
    '# a laptop sending two messages',
    'EHLO laptop.example',
    'MAIL FROM:<a@example.com> SIZE=100',
    'RCPT TO:<b@elsewhere.example>',
    'RCPT TO:<c@elsewhere.example>',
    'DATA',
    'Subject: hello',
    '',
    'body',
    '.',
    'PREDELIVERY',
    'MAIL FROM:<boom@example.com>',
    'QUIT',
  ].join('\n'));
  const r = await cli(['try', '--session', session, '-c', laptop.config, '--scripts', scripts, '--ip', '127.0.0.1', '--json']);
  const j = json(r);
  assert.deepEqual(j.steps.map((s) => [s.step, s.reply.replace(/queued as \w+/, 'queued as ID')]), [
    ["connect", "220 laptop.example.net ESMTP Postern"],
    ["helo", "250 laptop.example.net Nice to meet you, [127.0.0.1]"],
    ['mailfrom', '250 2.1.0 Accepted'],
    ['rcptto', '250 2.1.5 Accepted'],
    ['rcptto', '250 2.1.5 Accepted'],
    ['data', '250 2.0.0 Thanks: queued as ID'],
    ['predelivery', 'deliver to kaoru.example.net:25'],
    ['mailfrom', '451 4.3.0 Temporary policy failure, try again later'],
  ]);
  assert.deepEqual(j.steps.map((s) => s.calls.map((c) => c.hook)).flat(), ['connect', 'helo', 'mailfrom', 'rcptto', 'rcptto', 'data', 'predelivery', 'mailfrom']);
  // The transaction's facts accumulate as on the listener.
  const data = j.steps[5]!.calls[0]!.context;
  assert.deepEqual(data.transaction.recipients.map((r: { address: string }) => r.address), ['b@elsewhere.example', 'c@elsewhere.example']);
  assert.equal(data.connection.helo, 'laptop.example');
  assert.deepEqual(j.steps[2]!.calls[0]!.context.address.params, { SIZE: '100' });
  assert.equal(j.outcome, 'error');
  assert.equal(r.code, 3);

  await writeFile(session, 'EHLO laptop.example\nMAIL FROM:<a@example.com>\nRCPT TO:<b@elsewhere.example>\nBOGUS\n');
  const bad = await here(undefined, { session, config: laptop.config });
  assert.equal(bad.code, 3);
  assert.match(bad.stderr, /session\.txt:4: unknown command "BOGUS"/);
});

test('--session: AUTH inside a mail transaction is 503 as on the live listener, and its hook does not run', async () => {
  const session = join(permit.dir, 'auth-in-transaction.txt');
  await writeFile(session, 'EHLO laptop.example\nSTARTTLS\nMAIL FROM:<carol@example.com>\nAUTH PLAIN carol@example.com carol-secret\n');
  const j = json(await cli(['try', '--session', session, '-c', permit.config, '--json']));
  const auth = j.steps.find((s) => s.step === 'auth')!;
  assert.deepEqual([auth.reply, auth.calls.length], ['503 5.5.1 AUTH not permitted during a mail transaction', 0]);
});

test("docs/authoring.md's session file reads as the page says: each line's command, its trailing # comment skipped", async () => {
  const doc = await readFile(new URL('../../docs/authoring.md', import.meta.url), 'utf8');
  const block = /```text\n(# laptop-session\.txt[^]*?)```/.exec(doc)?.[1];
  assert.ok(block, 'the session file of docs/authoring.md');
  const dir = await mkdtemp(join(tmpdir(), 'postern-session-doc-'));
  try {
    await writeFile(join(dir, 'laptop-session.txt'), block);
    await writeFile(join(dir, 'message.eml'), 'Subject: hello\r\n\r\nhi\r\n');
    const commands = readSessionFile(join(dir, 'laptop-session.txt'));
    assert.deepEqual(commands.map((c) => c.kind), ['helo', 'starttls', 'auth', 'mailfrom', 'rcptto', 'rcptto', 'data', 'predelivery', 'quit']);
    assert.deepEqual(commands[2], { kind: 'auth', mechanism: 'PLAIN', username: 'alice', password: 'secret', authzid: '', line: 4 });
    assert.equal((commands[6] as { message: Buffer }).message.toString(), 'Subject: hello\r\n\r\nhi\r\n');
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('usage errors and a missing key are exit 3 with a clear message', async () => {
  const none = await cli(['try', '-c', relay.config]);
  assert.equal(none.code, 3);
  assert.match(none.stderr, /give a hook/);
  const unknown = await here('rcpt', { config: relay.config });
  assert.equal(unknown.code, 3);
  assert.match(unknown.stderr, /unknown hook "rcpt"/);
});

test('a certificate without its key (copied from a log, say) gets the verdict openssl verify gives with the listener\'s CA and CRL', async () => {
  const verdictOf = async (name: 'alice' | 'revoked' | 'selfsigned' | 'expired'): Promise<unknown[]> => {
    // The first on the command line, the others here.
    const r = name === 'alice'
      ? await cli(['try', 'rcptto', '-c', permit.config, '--cert', permit.pki.clients[name].cert, '--from', 'me@example.com', '--to', 'r@elsewhere.example', '--json'])
      : await here('rcptto', { config: permit.config, cert: permit.pki.clients[name].cert, from: 'me@example.com', to: ['r@elsewhere.example'], json: true });
    const c = callOf(json(r), 'rcptto').context.connection.clientCertificate;
    return [r.code, c.verified, c.verifyErrorCode, c.fingerprint.sha256];
  };
  // The same verdicts as the handshakes with the keys give (the test above, and the certificates test suite).
  const sha256 = (name: 'alice' | 'revoked' | 'selfsigned' | 'expired'): string => permit.pki.clients[name].fingerprintSha256;
  assert.deepEqual(await verdictOf('alice'), [0, true, null, sha256('alice')]);
  assert.deepEqual(await verdictOf('revoked'), [1, false, 'CERT_REVOKED', sha256('revoked')]);
  assert.deepEqual(await verdictOf('expired'), [1, false, 'CERT_HAS_EXPIRED', sha256('expired')]);
  const self = await verdictOf('selfsigned');
  assert.deepEqual([self[0], self[1], self[3]], [1, false, sha256('selfsigned')]);
});

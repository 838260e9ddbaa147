// Replay against hostile inputs: a recording must never hold a client's AUTH password (PLAIN or LOGIN),
// and is readable by the server's user only; `postern replay` over damaged or hand-edited recording files
// (any JSON value on a line, missing or mistyped fields, a cut line) skips those lines and says how many,
// instead of stopping with a bare TypeError. Real SMTP with STARTTLS on 127.0.0.1, the real command line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { b64, plain, submissionConfig } from '../auth/helpers/submission.ts';
import { recordingFiles } from '../../engine/replay/recording-files.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';


const cli = (args: string[]): Promise<CliResult> => runCli(args);

test('AUTH PLAIN and LOGIN passwords never reach the replay recordings, which only the server user can read', async () => {
  const pki = await makeTestPki();
  const password = 'Pw-never-recorded-7c1e';
  const server = await startTestServer({
    config: `${submissionConfig(pki, '{ authFailuresPerIp: 1000, authFailuresBeforeDelay: 100 }')}replay: { keepDays: 1 }\n`,
    files: { users: `alice@example.com:${await hashPassword(password)}\n` },
    // A live auth script: only hooks with one are recorded. It keeps the built-in decision.
    scripts: { 'auth.ts': 'export default function (ctx) { }' },
  });
  try {
    const ca = await readFile(pki.ca.cert, 'utf8');
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca } });
    assert.equal((await c.command(plain('alice@example.com', password))).code, 235);
    await c.quit();
    const l = await SmtpTestClient.connect(server.port('sub'));
    await l.hello({ starttls: { ca } });
    await l.command('AUTH LOGIN');
    await l.command(b64('alice@example.com'));
    assert.equal((await l.command(b64(`${password}-wrong`))).code, 535);
    await l.quit();

    const dataDir = join(server.dir, 'data');
    const text = async (): Promise<string> => (await Promise.all(recordingFiles(dataDir).map((f) => readFile(f.path, 'utf8')))).join('');
    await until('2 auth calls recorded', async () => (await text()).split('\n').filter(Boolean).length === 2);
    const all = await text();
    assert.ok(!all.includes(password), 'the password is not in the recording');
    assert.ok(!all.includes(b64(password).slice(0, 12)), 'nor its base64');
    const recorded = all.split('\n').filter(Boolean).map((line) => JSON.parse(line) as { hook: string; ctx: { auth: { username: string; password: string; mechanism: string } } });
    assert.deepEqual(recorded.map((r) => [r.hook, r.ctx.auth.mechanism, r.ctx.auth.username, r.ctx.auth.password]), [
      ['auth', 'PLAIN', 'alice@example.com', ''], ['auth', 'LOGIN', 'alice@example.com', ''],
    ]);
    assert.ok(!JSON.stringify(server.logs).includes(password), 'nor in the logs');
    assert.equal((await stat(join(dataDir, 'replay'))).mode & 0o077, 0, 'folder: owner only');
    for (const f of recordingFiles(dataDir)) assert.equal((await stat(f.path)).mode & 0o077, 0, `${f.path}: owner only`);
  } finally {
    await server.stop();
  }
});

test('postern replay skips recorded lines that are not whole records, whatever JSON they hold, and counts them', async () => {
  const server = await startTestServer({ config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in')] } as never) });
  try {
    const dataDir = join(server.dir, 'data');
    await mkdir(join(dataDir, 'replay'), { recursive: true });
    const t = new Date().toISOString();
    const good = { t, listener: 'in', hook: 'rcptto', cid: 'c1', ctx: { address: { address: 'x@example.com', localPart: 'x', domain: 'example.com' } }, verdict: 'none' };
    const garbage = [
      'null', '1', '"text"', '[]', '{}', 'true',
      JSON.stringify({ ...good, ctx: null }), JSON.stringify({ ...good, hook: 'constructor' }), JSON.stringify({ ...good, hook: '__proto__' }),
      JSON.stringify({ ...good, t: 5 }), JSON.stringify({ ...good, t: 'yesterday-ish' }), JSON.stringify({ ...good, verdict: 1 }),
      JSON.stringify({ ...good, listener: {} }), JSON.stringify({ ...good, cid: 7 }), JSON.stringify({ ...good, ctx: [] }),
      '{"t":"2026-12-05', '\u0000\u0001binary',
    ];
    await writeFile(join(dataDir, 'replay', `${t.slice(0, 10)}.1.jsonl`), `${[JSON.stringify(good), ...garbage, JSON.stringify(good)].join('\n')}\n`);
    const candidate = join(server.dir, 'candidate');
    await mkdir(candidate);
    await writeFile(join(candidate, 'rcptto.ts'), 'export default function (ctx) { if (ctx.address.localPart === "x") return reject("No x"); }');
    const r = await cli(['replay', '-c', join(server.dir, 'postern.yaml'), '--scripts', candidate, '--json']);
    assert.equal(r.code, 1, r.stderr);
    const summary = JSON.parse(r.stdout) as { decisions: number; changed: number; unreadable: number };
    assert.deepEqual([summary.decisions, summary.changed, summary.unreadable], [2, 2, garbage.length]);
  } finally {
    await server.stop();
  }
});

test('a candidate data script that reads the body is not compared (bodies are not recorded), and says so', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], replay: { keepDays: 1 }, listeners: [testListener('in')] } as never),
    scripts: { 'data.ts': 'export default function (ctx) { }' },
  });
  try {
    for (let i = 0; i < 2; i++) {
      const c = await SmtpTestClient.connect(server.port('in'));
      await c.hello();
      assert.equal((await c.sendMail('a@example.org', ['b@example.com'], `Subject: ${i}\r\n\r\nbuy casino chips\r\n`)).code, 250);
      await c.quit();
    }
    const dataDir = join(server.dir, 'data');
    await until('2 data calls recorded', async () => (await Promise.all(recordingFiles(dataDir).map((f) => readFile(f.path, 'utf8')))).join('').split('\n').filter(Boolean).length === 2);
    const candidate = join(server.dir, 'candidate');
    await mkdir(candidate);
    await writeFile(join(candidate, 'data.ts'), `export default async function (ctx) {
  let body = '';
  try { body = await ctx.message.text(); } catch { }
  if (ctx.data.headers.some(([n, v]) => n === 'Subject' && v === '1') || body.includes('casino')) return reject('Spam');
}`);
    const r = await cli(['replay', '-c', join(server.dir, 'postern.yaml'), '--scripts', candidate]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^0 recorded decisions, 0 would change$/m);
    assert.match(r.stdout, /^\(2 data-hook calls not compared: the candidate reads the body, which is not recorded\)$/m);
    // A candidate that decides on the headers alone is compared.
    await writeFile(join(candidate, 'data.ts'), `export default function (ctx) { if (ctx.data.headers.some(([n, v]) => n === 'Subject' && v === '1')) return reject('Spam'); }`);
    const h = await cli(['replay', '-c', join(server.dir, 'postern.yaml'), '--scripts', candidate]);
    assert.equal(h.code, 1, h.stdout + h.stderr);
    assert.match(h.stdout, /^2 recorded decisions, 1 would change$/m);
  } finally {
    await server.stop();
  }
});

test('recordings stop at maxMegabytes even when each record is large (data calls carry their header section)', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], replay: { keepDays: 1, maxMegabytes: 1 }, listeners: [testListener('in')] } as never),
    scripts: { 'data.ts': 'export default function (ctx) { }' },
  });
  try {
    // About 400 KB of header section per message, as folded lines of one field.
    const folded = Array.from({ length: 450 }, (_, i) => ` ${String(i).padStart(4, '0')}${'x'.repeat(880)}`).join('\r\n');
    for (let i = 0; i < 6; i++) {
      const c = await SmtpTestClient.connect(server.port('in'));
      await c.hello();
      assert.equal((await c.sendMail('a@example.org', ['b@example.com'], `Subject: ${i}\r\nX-Big:${folded}\r\n\r\nbody\r\n`)).code, 250);
      await c.quit();
    }
    const dataDir = join(server.dir, 'data');
    await until('the folder-full warning', async () => server.logs.some((l) => String(l.msg).startsWith('replay recordings folder full')));
    const sizes = await Promise.all(recordingFiles(dataDir).map(async (f) => (await stat(f.path)).size));
    const total = sizes.reduce((a, b) => a + b, 0);
    assert.ok(total < 1.5 * 1024 * 1024, `${total} bytes recorded against a limit of 1 MiB (records of ~400 KB)`);
  } finally {
    await server.stop();
  }
});

test('a candidate stuck in a step V8 cannot interrupt: replay counts that call as failed and stops there, naming it, with one thread lost', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], replay: { keepDays: 1 }, listeners: [testListener('in')] } as never),
    scripts: { 'rcptto.ts': 'export default function (ctx) { }' },
  });
  try {
    const c = await SmtpTestClient.connect(server.port('in'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    for (const to of ['first', 'stuck', 'stuck-again', 'last']) assert.equal((await c.command(`RCPT TO:<${to}@example.com>`)).code, 250);
    await c.quit();
    const dataDir = join(server.dir, 'data');
    await until('4 rcptto calls recorded', async () => (await Promise.all(recordingFiles(dataDir).map((f) => readFile(f.path, 'utf8')))).join('').split('\n').filter(Boolean).length === 4);
    const candidate = join(server.dir, 'candidate');
    await mkdir(candidate);
    await writeFile(join(candidate, 'rcptto.ts'), `export default function (ctx) {
  if (ctx.address.localPart.startsWith('stuck')) return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1));
  return reject('No');
}`);
    // Before: the call ran on the command's own thread, which isolated-vm then gave up on: SIGSEGV, nothing printed.
    // Without waiting for that thread's fate, replay went on to the next stuck call, parking one more thread.
    const r = await cli(['replay', '-c', join(server.dir, 'postern.yaml'), '--scripts', candidate]);
    assert.equal(r.code, 3, r.stdout + r.stderr);
    assert.match(r.stdout, /^2 recorded decisions, 2 would change$/m);
    assert.match(r.stdout, /^rcptto: none → reject: 1$/m);
    assert.match(r.stdout, /^rcptto: none → failed: 1\n.*\n    was none\n    now failed$/m);
    assert.match(r.stderr, /^postern replay: stopped: a candidate's call could not be stopped \(.+\), on the call recorded at \S+ \(\S+, address=stuck@example\.com\); /m);
  } finally {
    await server.stop();
  }
});

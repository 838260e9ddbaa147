/**
 * scripts/postern.d.ts is generated from engine/sandbox/api: it must be up to date, and it must make
 * tsc accept a correct policy script and reject a wrong one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { DTS_PATH, generateDts } from '../../engine/sandbox/api/generate-dts.ts';
import type { HookName } from '../../engine/sandbox/api/index.ts';
import { checkScriptDirectory, HOOK_NAMES } from '../../engine/sandbox/index.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener, testServerTls } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { PolicyClient, rcptRequest } from '../policy-service/helpers/policy-client.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');

test('scripts/postern.d.ts matches the api sources (regenerate: node engine/sandbox/api/generate-dts.ts)', async () => {
  const fresh = await generateDts();
  assert.ok(fresh.startsWith('// generated from engine/sandbox/api — do not edit'));
  assert.equal(await readFile(DTS_PATH, 'utf8'), fresh);
});

/** Type-check `files` the way a script author's editor would (scripts/tsconfig.json + postern.d.ts). */
async function typeCheck(files: Record<string, string>): Promise<{ ok: boolean; output: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-dts-'));
  try {
    await writeFile(join(dir, 'postern.d.ts'), await generateDts());
    await copyFile(join(ROOT, 'scripts/tsconfig.json'), join(dir, 'tsconfig.json'));
    for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [TSC, '-p', dir], { cwd: dir });
      return { ok: true, output: stdout };
    } catch (e) {
      return { ok: false, output: String((e as { stdout?: string }).stdout ?? e) };
    }
  } finally {
    await rm(dir, { recursive: true });
  }
}

const GOOD = `import type { AuthContext, PredeliveryContext, PredeliveryVerdict, Verdict } from "postern";

export default function (ctx: AuthContext): Verdict | void {
  if (ctx.connection.clientCertificate?.verified) return accept({ username: ctx.connection.certificateIdentity ?? undefined });
  const fingerprint: string | undefined = ctx.connection.clientCertificate?.fingerprint.sha256; // AUTH: only on Postern's own listener
  log(fingerprint);
  const pinned = lookup('pins', ctx.connection.clientCertificate?.pin.sha256 ?? '');
  log('auth', ctx.auth.mechanism, pinned, sha256(ctx.auth.username), hmac('sha256', 'k', 'v'));
  if (pinned === null) return reject('unknown certificate', { code: 535, enhanced: '5.7.8' });
  return defer(undefined, { disconnect: true });
}

export function route(ctx: PredeliveryContext): PredeliveryVerdict {
  return ctx.destination.kind === 'mx' ? deliver({ tls: { mode: 'verify', serverName: ctx.destination.host } }) : deliver();
}
`;

/** Checking the connection's source narrows its certificate: from SMTP every fingerprint is there. */
const GOOD_BY_SOURCE = `import type { MailFromContext, Verdict } from "postern";

export default function (ctx: MailFromContext): Verdict | void {
  const c = ctx.connection;
  if (c.source === 'smtp' && c.clientCertificate) {
    const fingerprint: string = c.clientCertificate.fingerprint.sha256;
    const notAfter: string = c.clientCertificate.notAfter;
    log(fingerprint, notAfter);
    return accept();
  }
  if (c.source === 'postfix-policy' && c.clientCertificate) {
    const digest: 'sha256' | 'sha1' | 'md5' = c.clientCertificate.digest;
    const fingerprint: string | null = c.clientCertificate.fingerprint.sha256;
    log(digest, fingerprint);
  }
}
`;

test('a correct script type-checks against the generated declarations', async () => {
  const { ok, output } = await typeCheck({ 'auth.ts': GOOD, 'mailfrom.ts': GOOD_BY_SOURCE });
  assert.ok(ok, output);
});

test('wrong scripts do not type-check', async () => {
  const { ok, output } = await typeCheck({
    'rcptto.ts': `import type { RcptToContext, Verdict } from "postern";
export default function (ctx: RcptToContext): Verdict | void {
  if (ctx.builtin.accepted) return { verdict: 'maybe' };
}
`,
    'data.ts': `import type { DataContext } from "postern";
export default function (ctx: DataContext) {
  const cert = ctx.connection.clientCertificate;
  if (cert) { const fingerprint: string = cert.fingerprint.sha256; log(fingerprint); }
}
`,
    'helo.ts': `import type { HeloContext } from "postern";
export default function (ctx: HeloContext) {
  setTimeout(() => {}, 1);
  return accept({ user: ctx.helo.name });
}
`,
  });
  assert.equal(ok, false);
  assert.match(output, /rcptto\.ts\(3,\d+\): error TS2322: Type '"maybe"' is not assignable/);
  // Without a look at the source, the certificate may be Postfix's, whose fingerprints may be null.
  assert.match(output, /data\.ts\(4,\d+\): error TS2322: Type 'string \| null' is not assignable to type 'string'/);
  assert.match(output, /helo\.ts\(3,3\): error TS2304: Cannot find name 'setTimeout'/);
  assert.match(output, /helo\.ts\(4,\d+\): error TS2353: Object literal may only specify known properties, and 'user'/);
});

/**
 * Every script the project shows an author — the scripts folder's own, each example's, each whole module
 * (`import type … from "postern"`) in docs/scripts.md — type-checks as an author's editor would check it: a
 * published example that the published types refuse teaches the wrong thing (or the types are wrong).
 */
test('the shipped scripts, the examples\' scripts and the docs\' script modules type-check against the declarations', async () => {
  const files: Record<string, string> = {};
  for (const file of await readdir(join(ROOT, 'scripts'))) {
    if (file.endsWith('.ts') && file !== 'postern.d.ts') files[`scripts-${file}`] = await readFile(join(ROOT, 'scripts', file), 'utf8');
  }
  for (const example of await readdir(join(ROOT, 'examples'))) {
    const folder = join(ROOT, 'examples', example, 'scripts');
    const scripts = await readdir(folder).catch(() => [] as string[]);
    for (const file of scripts) if (file.endsWith('.ts')) files[`${example}-${file}`] = await readFile(join(folder, file), 'utf8');
  }
  const doc = await readFile(join(ROOT, 'docs/scripts.md'), 'utf8');
  let blocks = 0;
  for (const [, block] of doc.matchAll(/```ts\n([\s\S]*?)```/g)) {
    if (!/^import type /m.test(block!)) continue; // a fragment (a line of a script), not a whole module (which may open with a comment naming its file)
    files[`docs-scripts-${++blocks}.ts`] = block!;
  }
  assert.ok(blocks >= 8 && Object.keys(files).length >= blocks + 10, `found ${Object.keys(files).join(', ')}`);
  const { ok, output } = await typeCheck(files);
  assert.ok(ok, output);
  // And each docs module loads as the script of its hook, as `postern check` would load it.
  for (const [name, source] of Object.entries(files)) {
    if (!name.startsWith('docs-')) continue;
    const context = /export default (?:async )?function \w*\s*\(ctx: (\w+)Context\)/.exec(source)?.[1];
    const hook = HOOK_NAMES.find((h) => h === context?.toLowerCase());
    assert.ok(hook, `${name}: the hook of ${source.slice(0, 200)}`);
    const dir = await mkdtemp(join(tmpdir(), 'postern-docs-script-'));
    try {
      await writeFile(join(dir, `${hook}.ts`), source);
      assert.deepEqual((await checkScriptDirectory(dir)).map(String), [], `${name} (${hook}) loads`);
    } finally {
      await rm(dir, { recursive: true });
    }
  }
});

const CONTEXT_TYPE: Record<HookName, string> = {
  connect: 'ConnectContext', helo: 'HeloContext', auth: 'AuthContext', mailfrom: 'MailFromContext',
  rcptto: 'RcptToContext', data: 'DataContext', predelivery: 'PredeliveryContext',
};

/** Every hook logs its whole context as JSON (a function as a marker), then lets the default decide. */
const CONTEXT_LOGGER = (hook: HookName): string =>
  `export default function (ctx) { log('CTX ${hook} ' + JSON.stringify(ctx, (k, v) => (typeof v === 'function' ? 'FUNCTION()' : v))); }`;

/**
 * What each hook's context really holds on a real session — STARTTLS with a client certificate, AUTH, two
 * recipients, a message delivered to a smarthost; and Postfix's policy requests — written out as object literals of the declared context
 * types, for tsc: a literal with a key the type lacks, without one it requires, or with a value of another
 * kind does not compile. A key the runtime adds or drops without the declarations following would let an
 * author's type check pass on code that reads nothing.
 */
test('every hook\'s context on a real session is what postern.d.ts declares: no key more, none missing, each of its type', async () => {
  const pki = await makeTestPki();
  const sink = await startSink();
  const s = await startDeliveryServer({
    files: { users: `bob@example.com:${await hashPassword('s3cret')}\n` },
    scripts: Object.fromEntries(HOOK_NAMES.map((hook) => [`${hook}.js`, CONTEXT_LOGGER(hook)])),
    config: configYaml({
      users: './users',
      localDomains: ['example.com'],
      listeners: [testListener('sub', { tls: testServerTls(pki, { clientCertificates: 'request' }), auth: { mechanisms: ['PLAIN'] } })],
      delivery: smarthostDelivery(sink.port),
      policyServices: [{ name: 'postfix', listen: '127.0.0.1:0' }],
    }),
  });
  try {
    // The same hooks asked by Postfix: a policy request's context (its certificate is what Postfix sends).
    const postfix = await PolicyClient.connect({ port: Number(s.policyAddresses.get('postfix')!.split(':').pop()) });
    const certificate = { ccert_subject: 'alice', ccert_issuer: 'Example CA', ccert_fingerprint: 'AB:'.repeat(31) + 'AB', ccert_pubkey_fingerprint: 'CD:'.repeat(31) + 'CD' };
    for (const [state, extra] of [['CONNECT', {}], ['EHLO', {}], ['MAIL', { sasl_method: 'PLAIN', sasl_username: 'alice' }], ['RCPT', certificate], ['DATA', { queue_id: '4XyZ1' }], ['END-OF-MESSAGE', { size: 1234 }]] as const) {
      assert.match(await postfix.ask(rcptRequest({ protocol_state: state, ...extra })), /^action=/);
    }
    postfix.close();
    const c = await SmtpTestClient.connect(s.port('sub'));
    const [ca, cert, key] = await Promise.all([pki.ca.cert, pki.clients.alice.cert, pki.clients.alice.key].map((f) => readFile(f, 'utf8')));
    await c.hello({ name: 'laptop.example', starttls: { ca: ca!, cert: cert!, key: key! } });
    assert.equal((await c.command(`AUTH PLAIN ${Buffer.from('\0bob@example.com\0s3cret').toString('base64')}`)).code, 235);
    assert.equal((await c.command('MAIL FROM:<bob@example.com> SIZE=100')).code, 250);
    assert.equal((await c.command('RCPT TO:<first@example.net> NOTIFY=FAILURE')).code, 250);
    assert.equal((await c.command('RCPT TO:<second@example.net>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    assert.equal((await c.command('Subject: contexts\r\nX-Two: a\r\n\r\nbody\r\n.')).code, 250);
    await c.quit();
    const contexts = (hook: HookName): string[] => s.logs.map((l) => String(l.msg)).filter((m) => m.startsWith(`CTX ${hook} `)).map((m) => m.slice(`CTX ${hook} `.length));
    await until('every hook ran', () => HOOK_NAMES.every((hook) => contexts(hook).length > 0));
    let source = 'import type * as P from "postern";\n';
    for (const hook of HOOK_NAMES) {
      for (const [i, json] of contexts(hook).entries()) {
        source += `export const ${hook}${i}: P.${CONTEXT_TYPE[hook]} = ${json.replaceAll('"FUNCTION()"', 'async () => ""')};\n`;
      }
    }
    const { ok, output } = await typeCheck({ 'contexts.ts': source });
    assert.ok(ok, output);
  } finally {
    await s.stop();
    await sink.close();
  }
});

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
    if (!block!.startsWith('import type ')) continue; // a fragment (a line of a script), not a whole module
    files[`docs-scripts-${++blocks}.ts`] = block!;
  }
  assert.ok(blocks >= 8 && Object.keys(files).length >= blocks + 10, `found ${Object.keys(files).join(', ')}`);
  const { ok, output } = await typeCheck(files);
  assert.ok(ok, output);
});

/** Reading a scripts folder: which files count, what happens to TypeScript, and what is an error. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkScriptDirectory, loadScriptDirectory, Sandbox, ScriptErrors } from '../../engine/sandbox/index.ts';
import { recordingHost } from '../helpers/sandbox-fixtures.ts';

async function folder(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-scripts-'));
  for (const [name, text] of Object.entries(files)) {
    if (text === '<dir>') await mkdir(join(dir, name));
    else await writeFile(join(dir, name), text);
  }
  return dir;
}

const AUTH_TS = 'import type { AuthContext } from "postern";\nexport default function (ctx: AuthContext) { return accept({ username: ctx.auth.username }); }\n';

test('known hooks only, in hook order, TypeScript stripped; editor leftovers ignored', async () => {
  const dir = await folder({
    'rcptto.mjs': 'export default () => reject("no");\n',
    'auth.ts': AUTH_TS,
    'connect.js': '\uFEFFexport default () => {};\n',
    '.auth.ts.swp': 'garbage',
    'auth.ts~': 'export default 1',
    '#auth.ts#': 'export default 1',
    'auth.ts.orig': 'x',
    'helpers.ts': 'export const x = 1;',
    'README.md': '# scripts',
    'tables': '<dir>',
  });
  try {
    const scripts = await loadScriptDirectory(dir);
    assert.deepEqual(scripts.map((s) => [s.hook, s.file]), [
      ['connect', join(dir, 'connect.js')], ['auth', join(dir, 'auth.ts')], ['rcptto', join(dir, 'rcptto.mjs')],
    ]);
    const auth = scripts.find((s) => s.hook === 'auth')!;
    assert.equal(auth.source.length, AUTH_TS.length, 'stripping keeps every position');
    assert.doesNotMatch(auth.source, /AuthContext/);
    assert.equal(scripts[0]!.source, 'export default () => {};\n', 'byte-order mark dropped');
    const sandbox = await Sandbox.create({ host: recordingHost(), scripts });
    try {
      assert.deepEqual(await sandbox.invoke('auth', { auth: { username: 'u' } }, 'c1'), { verdict: 'accept', username: 'u' });
      assert.equal(sandbox.has('helo'), false);
    } finally {
      await sandbox.dispose();
    }
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('two files for one hook is an error naming both; every problem is reported', async () => {
  const dir = await folder({
    'auth.js': 'export default () => {};',
    'auth.ts': AUTH_TS,
    'helo.ts': 'export default () => {};\nenum E { A }\n',
    'data.js': 'export default (',
  });
  try {
    await assert.rejects(loadScriptDirectory(dir), (e: unknown) => {
      assert.ok(e instanceof ScriptErrors);
      assert.equal(e.errors.length, 2, e.message);
      assert.match(e.errors[0]!.message, /hook "auth" has more than one script \(auth\.js, auth\.ts\)/);
      assert.equal(String(e.errors[1]), `${join(dir, 'helo.ts')}:2:1: SyntaxError: TypeScript enum is not supported in strip-only mode`);
      return true;
    });
    const all = await checkScriptDirectory(dir);
    assert.equal(all.length, 2, 'loading problems stop before compiling');
    await rm(join(dir, 'auth.js'));
    await rm(join(dir, 'helo.ts'));
    const compile = await checkScriptDirectory(dir);
    assert.deepEqual(compile.map((e) => [e.file, e.line]), [[join(dir, 'data.js'), 1]]);
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('a folder that does not exist holds no scripts', async () => {
  assert.deepEqual(await loadScriptDirectory(join(tmpdir(), 'postern-no-such-folder-' + process.pid)), []);
});

test('a directory named like a script is an error', async () => {
  const dir = await folder({ 'auth.ts': '<dir>' });
  try {
    await assert.rejects(loadScriptDirectory(dir), /auth\.ts:1:1: cannot read: not a regular file/);
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('a script that looks for private keys in mail loads; one that holds a key, as a file or a string literal, does not', async () => {
  const key = String(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const dir = await folder({
    // docs/scripts.md's own example: the BEGIN line alone is no key.
    'data.ts': 'export default async function (ctx) {\n  const body = await ctx.message.text(4096);\n' +
      '  if (body.includes("-----BEGIN PRIVATE KEY-----")) return reject("Message looks like it carries a private key", { enhanced: "5.7.1" });\n}\n',
    'rcptto.js': `const key = ${JSON.stringify(key)};\nexport default () => undefined;\n`, // "…-----\nMIGHAgEA…"
    'auth.js': key, // a key file where a script should be (a symlink to one, say)
  });
  try {
    await assert.rejects(loadScriptDirectory(dir), (e: unknown) => {
      assert.ok(e instanceof ScriptErrors);
      assert.deepEqual(e.errors.map(String), ['auth.js', 'rcptto.js'].map((f) =>
        `${join(dir, f)}:1:1: holds a PEM private key ("PRIVATE KEY" block), not a policy script: refused, nothing of it shown (is the path right?)`));
      return true;
    });
    await rm(join(dir, 'auth.js'));
    await rm(join(dir, 'rcptto.js'));
    assert.deepEqual((await loadScriptDirectory(dir)).map((s) => s.hook), ['data']);
  } finally {
    await rm(dir, { recursive: true });
  }
});

// `postern try` with hostile inputs: a certificate with the key of another one, files that are not PEM, a
// folder where a file is expected, a session file's DATA naming a missing file. Each gets exit 3 and one
// line naming the file (and the session file's line), never a bare OpenSSL code; and a key that does not
// belong to the certificate is refused, not quietly tried as a session without a certificate (OpenSSL then
// sends none). The real command line against a real STARTTLS listener's configuration.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createPrivateKey } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { tryCommand, type TryOptions } from '../../engine/cli/try.ts';


const cli = (args: string[]): Promise<CliResult> => runCli(args);
// A case's further variants: the command's function in this process (a process each proves nothing more than
// its first run on the command line), with the command line's defaults.
const here = (hook: string | undefined, opts: TryOptions): Promise<CliResult> =>
  runInProcess(() => tryCommand(hook, { ip: '203.0.113.5', tls: true, ...opts }));

let dir: string;
let pki: TestPki;
let config: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-try-hostile-'));
  pki = await makeTestPki(join(dir, 'pki'));
  await mkdir(join(dir, 'scripts')); // named in the configuration, so it must exist (empty: no scripts)
  config = join(dir, 'postern.yaml');
  await writeFile(config, configYaml({
    dataDir: join(dir, 'data'), scripts: join(dir, 'scripts'), localDomains: ['example.com'],
    listeners: [testListener('sub', { tls: testServerTls(pki, { clientCertificates: 'request' }) })],
  }));
  await writeFile(join(dir, 'garbage.pem'), Buffer.from([0x00, 0xff, 0x13, 0x37, 0x0a, 0x2d, 0x2d]));
  await writeFile(join(dir, 'broken.pem'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
  const aliceKey = createPrivateKey(await readFile(pki.clients.alice.key, 'utf8'));
  await writeFile(join(dir, 'encrypted.key'), aliceKey.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'secret' }));
  await writeFile(join(dir, 'session.txt'), 'EHLO x.example\nMAIL FROM:<a@example.org>\nRCPT TO:<b@example.com>\nDATA missing.eml\n');
});
after(() => rm(dir, { recursive: true, force: true }));

const mailfrom = (...extra: string[]) => cli(['try', '-c', config, '--from', 'a@example.org', ...extra, 'mailfrom']);
const mailfromHere = (opts: TryOptions) => here('mailfrom', { config, from: 'a@example.org', ...opts });

test('a key of another certificate is refused, naming both files, instead of a try without a certificate', async () => {
  const r = await mailfrom('--cert', pki.clients.alice.cert, '--key', pki.clients.bob.key);
  assert.equal(r.code, 3, r.stdout);
  assert.equal(r.stderr, `postern try: ${pki.clients.bob.key}: this private key is not the key of the certificate in ${pki.clients.alice.cert}\n`);
  // The right key: the certificate reaches the hook.
  const ok = await mailfromHere({ cert: pki.clients.alice.cert, key: pki.clients.alice.key, json: true });
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /"clientCertificate": \{/);
});

test('files that are not PEM, or not files, are named in one line', async () => {
  const cases: Array<[{ cert: string; key: string }, RegExp]> = [
    [{ cert: join(dir, 'broken.pem'), key: pki.clients.alice.key }, /^postern try: .*broken\.pem: not a PEM certificate \(/],
    [{ cert: join(dir, 'garbage.pem'), key: pki.clients.alice.key }, /^postern try: .*garbage\.pem: not a PEM certificate \(/],
    [{ cert: pki.clients.alice.cert, key: join(dir, 'garbage.pem') }, /^postern try: .*garbage\.pem: not a PEM private key \(/],
    // OpenSSL's own word for it is "interrupted or cancelled".
    [{ cert: pki.clients.alice.cert, key: join(dir, 'encrypted.key') }, /^postern try: .*encrypted\.key: the private key is encrypted \(passphrase-protected\), and Postern takes no passphrase/],
    [{ cert: dir, key: pki.clients.alice.key }, /^postern try: .*postern-try-hostile-[^:]*: cannot be read \(EISDIR\)$/],
  ];
  // The first on the command line (one line on the process's stderr), the others here.
  for (const [i, [files, expected]] of cases.entries()) {
    const r = i === 0 ? await mailfrom('--cert', files.cert, '--key', files.key) : await mailfromHere(files);
    assert.equal(r.code, 3, JSON.stringify(files));
    assert.match(r.stderr.trim(), expected);
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line, no stack trace');
  }
  const data = await here('data', { config, to: ['b@example.com'], message: dir });
  assert.equal(data.code, 3);
  assert.match(data.stderr, /: cannot be read \(EISDIR\)\n$/);
});

test('a session file that is a folder, or whose DATA names a missing file, is named with its line', async () => {
  const folder = await cli(['try', '-c', config, '--session', dir]);
  assert.equal(folder.code, 3);
  assert.equal(folder.stderr, `postern try: ${dir}: cannot be read (EISDIR)\n`);
  const missing = await here(undefined, { config, session: join(dir, 'session.txt') });
  assert.equal(missing.code, 3);
  assert.equal(missing.stderr, `postern try: ${join(dir, 'session.txt')}:4: DATA missing.eml: cannot be read (ENOENT)\n`);
});

test('DATA of a message starting with a tab reads as the server spools it: no header fields, all body', async () => {
  const scripts = join(dir, 'ws-scripts');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(scripts, { recursive: true });
  await writeFile(join(scripts, 'data.ts'), 'export default async function (ctx) { log("h=" + ctx.data.headers.length + " b=" + JSON.stringify((await ctx.message.text()).slice(0, 6))); }');
  await writeFile(join(dir, 'ws.eml'), '\t(Authenticated sender: ceo@example.com)\r\nSubject: y\r\n\r\nbody\r\n');
  const r = await cli(['try', '-c', config, '--no-tls', '--scripts', scripts, '--to', 'b@example.com', '--message', join(dir, 'ws.eml'), 'data']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /h=0 b="\\t\(Auth"/);
});

test('a script stuck in a builtin V8 cannot interrupt: the verdict (fails closed) is shown, and the command exits 3, not by a signal', async () => {
  const scripts = join(dir, 'stuck-scripts');
  await mkdir(scripts, { recursive: true });
  await writeFile(join(scripts, 'rcptto.js'), "export default function () { return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1)); }\n");
  // Before: a SIGSEGV with no output at all (the call held the command's own thread); then the output and a SIGKILL.
  const r = await cli(['try', '-c', config, '--scripts', scripts, '--from', 'a@example.org', '--to', 'b@example.com', 'rcptto']);
  assert.match(r.stdout, /verdict: script error \(timeout\) .*rcptto\.js: no result within 100 ms \+ 500 ms: the script had not stopped — fails closed/);
  assert.match(r.stdout, /^< 451 4\.3\.0 Temporary policy failure, try again later$/m);
  assert.match(r.stdout, /outcome: error \(exit 3\)/);
  assert.equal(r.stderr, '', 'no fallback to a signal');
  assert.deepEqual([r.code, r.signal], [3, null], 'the documented status of a script error, with the isolate thread still parked');
});

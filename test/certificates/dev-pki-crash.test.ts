// The development PKI `npm start` writes on its first start (data/pki), after a start that was killed or lost
// its power while writing it: the next start makes what is missing again, or refuses naming the file; it
// never runs on an empty key or certificate file that a start without fsync left behind.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { diskFaults, type DiskFaults } from '../helpers/disk-faults.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { runCli } from '../helpers/cli.ts';
import { here } from '../pki/in-process.ts';
import { promisify } from 'node:util';
import { DEVELOPMENT_P12_PASSWORD, writeDevelopmentPki } from '../../engine/certificates/index.ts';

const scratch = useScratchDir('postern-dev-pki-crash-');
const OPTIONS = { hostname: 'localhost', demoUser: { name: 'demo', email: 'demo@example.test' } };
let faults: DiskFaults;

before(() => { faults = diskFaults(); });

/** writeDevelopmentPki(dir), what `npm start` runs first, in a process of its own (with `env`). */
function writeInChild(dir: string, env: Record<string, string>): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const module = new URL('../../engine/certificates/index.ts', import.meta.url).pathname;
  const script = `import { writeDevelopmentPki } from ${JSON.stringify(module)}; await writeDevelopmentPki(${JSON.stringify(dir)}, ${JSON.stringify(OPTIONS)});`;
  return new Promise((resolve) => {
    const child = execFile(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, NODE_NO_WARNINGS: '1', ...env } });
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/** Every key matches its certificate, and every certificate chains to the CA. */
async function checkWhole(dir: string): Promise<void> {
  const ca = new X509Certificate(await readFile(join(dir, 'ca.crt')));
  assert.ok(ca.checkPrivateKey(createPrivateKey(await readFile(join(dir, 'ca.key')))), 'ca.key is the CA\'s key');
  for (const name of ['server', 'demo']) {
    const cert = new X509Certificate(await readFile(join(dir, `${name}.crt`)));
    assert.ok(cert.verify(ca.publicKey), `${name}.crt is signed by the CA`);
    assert.ok(cert.publicKey.export({ type: 'spki', format: 'der' }).equals(createPublicKey(createPrivateKey(await readFile(join(dir, `${name}.key`)))).export({ type: 'spki', format: 'der' })), `${name}.key matches`);
  }
  for (const f of readdirSync(dir)) assert.ok(statSync(join(dir, f)).size > 0, `${f} is not empty`);
  for (const f of ['ca.key', 'server.key', 'demo.key', 'demo.pem']) assert.equal(statSync(join(dir, f)).mode & 0o777, 0o600, f);
}

for (const file of ['ca.crt', 'ca.key', 'ca.crl', 'server.key', 'demo.key']) {
  test(`the first start killed as it writes ${file}: the next start completes the development PKI, every file whole`, async () => {
    const dir = join(scratch.path, `killed-${file}`);
    faults.armFor('rename-kill', `/${file}`);
    const first = await writeInChild(dir, faults.env);
    assert.ok(faults.taken('rename-kill'), `${file} was written by a rename`);
    assert.equal(first.signal, 'SIGKILL');
    assert.ok(!existsSync(join(dir, file)) || statSync(join(dir, file)).size > 0, `${file}: absent or whole`);
    await writeDevelopmentPki(dir, OPTIONS);
    await checkWhole(dir);
    assert.deepEqual(readdirSync(dir).filter((n) => n.endsWith('.tmp')), [], 'no copy of a key left behind by the killed start');
  });
}

test('a development CA key or CRL left empty (a power loss after a start that did not sync): npm start refuses, naming the file', async () => {
  for (const file of ['ca.key', 'ca.crt', 'ca.crl']) {
    const cwd = join(scratch.path, `empty-${file}`);
    await mkdir(cwd);
    await writeDevelopmentPki(join(cwd, 'data', 'pki'), OPTIONS);
    await writeFile(join(cwd, 'data', 'pki', file), '');
    // Refused before it listens: the embedded default's fixed ports are never bound.
    const r = await runCli(['serve'], { cwd, timeoutMs: 60_000 });
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, new RegExp(`${join(cwd, 'data', 'pki', file).replace(/[.]/g, '\\.')}`), `${file}: ${r.stderr}`);
  }
});

test('a development CRL lost after postern pki revoke used this CA: npm start refuses rather than write an empty one', async () => {
  const cwd = join(scratch.path, 'lost-crl');
  const dir = join(cwd, 'data', 'pki');
  await mkdir(cwd);
  await writeDevelopmentPki(dir, OPTIONS);
  // pki revoke and pki crl run their command's function in this process (the same code); npm start is the command line.
  const revoke = await here.revoke('1a2b3c4d5e6f', { dir });
  assert.equal(revoke.code, 0, revoke.stderr);
  await rm(join(dir, 'ca.crl'));
  const r = await runCli(['serve'], { cwd, timeoutMs: 60_000 });
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /ca\.crl: missing, and .*issued\.json records what it revoked/);
  const crl = await here.crl({ dir });
  assert.equal(crl.code, 0, crl.stderr);
  assert.match((await writeDevelopmentPki(dir, OPTIONS)).created.join(), /^$/, 'the CRL made again is kept');
});

test('the first start killed while openssl writes demo.p12: the next start writes it whole (an empty one left in place was kept for good)', async () => {
  const dir = join(scratch.path, 'killed-p12');
  // An openssl that kills the start that ran it, as a kill -9 or a power loss while the .p12 is written.
  const bin = join(scratch.path, 'killing-openssl');
  await mkdir(bin);
  await writeFile(join(bin, 'openssl'), '#!/bin/sh\nkill -KILL $PPID\nsleep 5\n', { mode: 0o755 });
  const first = await writeInChild(dir, { PATH: `${bin}:${process.env.PATH}` });
  assert.equal(first.signal, 'SIGKILL');
  assert.ok(!existsSync(join(dir, 'demo.p12')) || statSync(join(dir, 'demo.p12')).size > 0, 'demo.p12: absent or whole');
  await writeDevelopmentPki(dir, OPTIONS);
  await checkWhole(dir);
  const read = await promisify(execFile)('openssl', ['pkcs12', '-in', join(dir, 'demo.p12'), '-nokeys', '-passin', `pass:${DEVELOPMENT_P12_PASSWORD}`]);
  assert.match(read.stdout, /BEGIN CERTIFICATE/, 'demo.p12 is a PKCS#12 with the demo certificate');
  assert.equal(statSync(join(dir, 'demo.p12')).mode & 0o777, 0o600);
});

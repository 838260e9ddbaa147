/**
 * What a scripts folder may hold that is not a script, on a running server's hot reload: a huge file (a log
 * or an image copied in by mistake, a symlink to one) and a private key (a symlink pointing at the TLS key).
 * Each is refused naming the file, without reading it whole (a 1.5 GB script was read into memory by the
 * digest and again by the loader, in every process) or compiling it (no key material enters an isolate, and
 * nothing of it is shown); the running scripts keep deciding, and a fixed folder applies.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { rm, symlink, truncate, writeFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { mailFromReply, verdictScript } from './helpers.ts';

const MX = configYaml({ localDomains: ['example.com'], listeners: [testListener('mx')] });

const lastError = (s: TestServer): string => s.reloader.status.data.lastError?.join('\n') ?? '';

test('a script file of 1.5 GB is refused by its size, unread; the running scripts keep deciding', async () => {
  const s = await startTestServer({ config: MX, scripts: { 'mailfrom.ts': verdictScript('kept') } });
  try {
    const file = join(s.dir, 'scripts', 'rcptto.js');
    await writeFile(file, '');
    await truncate(file, 1500 * 1024 * 1024); // sparse: no disk used, but 1.5 GB to read
    await s.reloader.whenIdle();
    assert.match(lastError(s), new RegExp(`${file}:1:1: is 1572864000 bytes, longer than a policy script may be \\(8388608\\): not read`));
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 kept');
    await rm(file);
    await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), verdictScript('next'));
    await s.reloader.whenIdle();
    assert.equal(lastError(s), '');
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 next');
  } finally { await s.stop(); }
});

test('a script that is a symlink to a private key is refused as one, nothing of the key shown', async () => {
  const s = await startTestServer({ config: MX, scripts: { 'mailfrom.ts': verdictScript('kept') } });
  try {
    const key = join(s.dir, 'key.pem');
    execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key]);
    const file = join(s.dir, 'scripts', 'rcptto.js');
    await symlink(key, file);
    await s.reloader.whenIdle();
    assert.match(lastError(s), new RegExp(`${file}:1:1: holds a PEM private key \\("PRIVATE KEY" block\\), not a policy script: refused, nothing of it shown`));
    const body = (await readFile(key, 'utf8')).split('\n')[1]!;
    assert.ok(!s.logs.some((l) => JSON.stringify(l).includes(body.slice(0, 20))), 'no key material in the log');
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 kept');
    await rm(file);
    await s.reloader.whenIdle();
    assert.equal(lastError(s), '');
  } finally { await s.stop(); }
});

// Lifetimes in days at their edges: an end after 9999-12-31 (RFC 5280's last date) or beyond any date
// JavaScript holds (about 100 million days) was signed as a malformed certificate or CRL. `pki init` left a CA
// folder whose ca.crt nothing could read; `pki issue` (and the account page's issueDays) failed with
// "malformed DER certificate". Each is read back by openssl, as a server or a client would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { useScratchDir } from '../helpers/scratch.ts';
import { postern, run } from './helpers.ts';
import { here } from './in-process.ts';

const scratch = useScratchDir('postern-pki-lifetime-');

const endOf = async (file: string, kind: 'x509' | 'crl'): Promise<string> => {
  const out = (await run('openssl', kind === 'x509' ? ['x509', '-in', file, '-noout', '-enddate'] : ['crl', '-in', file, '-noout', '-nextupdate'])).stdout;
  return /=(.+)$/m.exec(out)?.[1] ?? assert.fail(`no date in: ${out}`);
};

for (const days of ['3000000', '100000000']) {
  test(`pki init --days ${days}: refused, naming --days, before anything is written`, async () => {
    const dir = join(scratch.path, `ca-${days}`);
    // The first refusal is the command line's; the other, and the right inits, init's function in this process.
    const r = days === '3000000' ? await postern(['pki', 'init', '--dir', dir, '--days', days]) : await here.init(dir, { days });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`--days ${days}: the CA would end after 9999-12-31`));
    await assert.rejects(access(join(dir, 'ca.key')), 'no key of a CA that was never made');
    // The folder is free for a right init.
    assert.equal((await here.init(dir)).code, 0);
  });
}

test('pki issue --days 100000000 and init --crl-days 100000000: certificate and CRL end with the CA, readable', async () => {
  const dir = join(scratch.path, 'ca');
  const init = await postern(['pki', 'init', '--dir', dir, '--days', '2900000', '--crl-days', '100000000']);
  assert.equal(init.code, 0, init.stderr);
  const caEnd = await endOf(join(dir, 'ca.crt'), 'x509');
  assert.match(caEnd, /99\d\d GMT$/);
  assert.equal(await endOf(join(dir, 'ca.crl'), 'crl'), caEnd);
  const out = join(scratch.path, 'device');
  const issued = await postern(['pki', 'issue', 'alice@example.com', '--device', 'laptop', '--dir', dir, '--days', '100000000', '--out', out, '--json']);
  assert.equal(issued.code, 0, issued.stderr);
  const files = (JSON.parse(issued.stdout) as { files: { cert: string } }).files;
  assert.equal(await endOf(files.cert, 'x509'), caEnd);
  assert.equal(await endOf(join(dir, 'ca.crl'), 'crl'), caEnd);
});

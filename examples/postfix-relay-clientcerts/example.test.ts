// Postfix permit_tls_clientcerts + relay_clientcerts, with this folder's postern.yaml, rcptto.ts and table.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startExample, smtpClient, needs, run, type ExampleServer } from '../../test/helpers/example.ts';
import type { ClientName } from '../../test/helpers/pki.ts';

const colon = (hex: string): string => hex.toUpperCase().match(/../g)!.join(':');
let ex: ExampleServer;
before(async () => {
  ex = await startExample('postfix-relay-clientcerts', async (pki) => ({
    relay_clientcerts: [
      `${colon(pki.clients.alice.fingerprintMd5)}   laptop.example.net`, // openssl x509 -fingerprint -noout -md5, as in the seed
      `${pki.clients.selfsigned.pinColon}   phone.example.net`, // SHA-256 of the public key (Postfix pkey_fingerprint)
      `${await publicKeyMd5(pki.clients.ecdsa.cert)}   tablet.example.net`, // pkey_fingerprint with the md5 digest
    ].join('\n'),
  }));
});

/** The MD5 public-key fingerprint as the openssl pipeline prints it (lowercase colon hex), which Postfix computes too. */
async function publicKeyMd5(cert: string): Promise<string> {
  const r = await run('sh', ['-c', `openssl x509 -in '${cert}' -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -md5 -c`]);
  const fp = /= ([0-9a-f:]{47})$/m.exec(r.stdout)?.[1];
  assert.ok(fp, r.output);
  return fp;
}
after(() => ex.stop());

const swaks = (client: ClientName) => run('swaks', ['--server', '127.0.0.1', '--port', String(ex.port()), '--tls', '--tls-ca-path', ex.pki.ca.cert,
  '--tls-cert', ex.pki.clients[client].cert, '--tls-key', ex.pki.clients[client].key,
  '--ehlo', 'laptop.example', '--from', 'me@example.net', '--to', 'r@elsewhere.example', '--header', 'Subject: swaks']);
const relayed = (stdout: string): boolean => /<~  250 2\.0\.0 Ok: queued as \w+/.test(stdout);
const DENIED = /<~\* 554 5\.7\.1 <r@elsewhere\.example>: Relay access denied/;

test('swaks: a certificate listed by its MD5 fingerprint relays (its CA is not configured)', needs('swaks'), async () => {
  const r = await swaks('alice');
  assert.equal(r.code, 0, r.output);
  assert.ok(relayed(r.stdout), r.output);
});

test('swaks: a self-signed certificate listed by its public-key pin relays', needs('swaks'), async () => {
  const r = await swaks('selfsigned');
  assert.equal(r.code, 0, r.output);
  assert.ok(relayed(r.stdout), r.output);
});

test('swaks: a certificate listed by the MD5 of its public key (Postfix\'s pkey_fingerprint under smtpd_tls_fingerprint_digest = md5) relays', needs('swaks'), async () => {
  const r = await swaks('ecdsa');
  assert.equal(r.code, 0, r.output);
  assert.ok(relayed(r.stdout), r.output);
});

test('swaks: an unlisted certificate gets 554 5.7.1 Relay access denied', needs('swaks'), async () => {
  const r = await swaks('bob');
  assert.equal(r.code, 24, `swaks exit 24 (RCPT refused)\n${r.output}`);
  assert.match(r.stdout, DENIED);
});

test('without TLS or a certificate: the local domain is accepted, relaying is not', async () => {
  const c = await smtpClient(ex, { tls: false });
  assert.equal((await c.command('MAIL FROM:<someone@elsewhere.example>')).code, 250);
  assert.equal((await c.command('RCPT TO:<postmaster@example.net>')).code, 250);
  assert.equal((await c.command('RCPT TO:<r@elsewhere.example>')).text, '554 5.7.1 <r@elsewhere.example>: Relay access denied');
  await c.quit();
});

test('withdrawing a laptop is deleting its line: the table reloads and the certificate may no longer relay', needs('swaks'), async () => {
  const table = join(ex.dir, 'relay_clientcerts');
  const reloaded = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no reload within 10 s')), 10_000);
    const off = ex.running.reloader.onReload((o) => { off(); clearTimeout(timer); resolve(o); });
  });
  const md5 = colon(ex.pki.clients.alice.fingerprintMd5);
  await writeFile(table, (await readFile(table, 'utf8')).split('\n').filter((l) => !l.startsWith(md5)).join('\n'));
  assert.partialDeepStrictEqual(await reloaded, { changed: true, ok: true });
  assert.match((await swaks('alice')).stdout, DENIED);
  assert.ok(relayed((await swaks('selfsigned')).stdout));
});

// The account page and a CA taken out of the listener's caFiles: a session signed in with a certificate that
// CA verified ends at its next request, and a keep-alive connection whose handshake that CA verified no
// longer names an account (its verdict is its handshake's). Node's https client with the device certificate
// issued by the server's CA (engine/pki), one keep-alive connection throughout. And the same for a certificate
// that ends while in use: before, the session (kept alive by requests, able to issue fresh two-year
// certificates) and the connection went on past its end, which a new handshake (CERT_HAS_EXPIRED) refuses.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certificateSession, requestsOn, startAccounts, USERS, type AccountsSetup } from './helpers.ts';
import { issueDevice, pkiPaths } from '../../engine/pki/index.ts';
import { until } from '../helpers/wait.ts';

let s: AccountsSetup;
let scratch: string;
let agent: https.Agent;
/** One request on the agent's one connection. */
let request: ReturnType<typeof requestsOn>;

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'postern-accounts-ca-'));
  s = await startAccounts(scratch);
  const device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'laptop' });
  agent = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
  request = requestsOn(agent, s.url);
});
after(async () => {
  agent?.destroy();
  await s?.server.stop();
  await rm(scratch, { recursive: true, force: true });
});

test('a certificate session ends at the certificate\'s end, and the open connection names no account past it', async () => {
  // Whole seconds: X.509 times have no fractions.
  const notAfter = new Date(Math.ceil((Date.now() + 6000) / 1000) * 1000);
  const device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'ending', notAfter });
  const ending = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
  try {
    const on = requestsOn(ending, s.url);
    const { cookies, connection } = await certificateSession(on);
    // Polled on the one connection (its keep-alive never idles out); the deadline is a guard, not a measure.
    await until('the certificate session to end', async () => (await on('/devices', { cookies })).location === '/signin', { timeoutMs: 60_000 });
    assert.ok(Date.now() >= notAfter.getTime(), 'not before the certificate\'s end');
    const again = await on('/signin');
    assert.equal(again.socket, connection, 'still the connection whose handshake verified the certificate');
    assert.match(again.body, /names no account here \(expired\)/);
    assert.ok(s.server.logs.some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
  } finally {
    ending.destroy();
  }
});

test('a certificate session ends, and the open connection names no account, once its CA is out of caFiles', async () => {
  const logged = s.server.logs.length;
  const { cookies, connection } = await certificateSession(request);

  // The listener no longer trusts the server's CA (another CA and its CRL in its place).
  const generation = s.server.runtime.generation;
  const file = join(s.server.dir, 'postern.yaml');
  const paths = pkiPaths(s.caDir);
  await writeFile(file, (await readFile(file, 'utf8')).replaceAll(paths.caCert, s.pki.otherCa.cert).replaceAll(paths.crl, s.pki.otherCa.crl));
  await until('the configuration without the CA is reloaded', () => s.server.runtime.generation !== generation, { timeoutMs: 60_000 });

  // The page takes the new CA list a moment after the SMTP listener (its own reload hook).
  await until('the certificate session to end', async () => (await request('/devices', { cookies })).location === '/signin', { timeoutMs: 60_000 });
  const again = await request('/signin');
  assert.equal(again.socket, connection, 'still the connection whose handshake the old CA verified');
  assert.doesNotMatch(again.body, /presented a certificate for <b>alice@example\.com<\/b>/);
  assert.ok(s.server.logs.slice(logged).some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
});

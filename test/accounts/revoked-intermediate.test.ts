// The account page and an intermediate CA revoked while it is in use: a session signed in with a certificate
// that intermediate issued ends at its next request once the root's CRL listing it is reloaded, and the open
// keep-alive connection whose handshake it verified no longer names an account. Only the leaf's serial was
// checked, so the session (devices, issuing, revoking) went on for as long as the browser kept it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certificateSession, requestsOn, startAccounts, USERS, type AccountsSetup } from './helpers.ts';
import { pkiPaths } from '../../engine/pki/index.ts';
import { createCertificateAuthority, createCrl, issueClientCertificate, loadAuthority, type Authority } from '../../engine/certificates/index.ts';
import { until } from '../helpers/wait.ts';

let s: AccountsSetup;
let scratch: string;
let agent: https.Agent;
/** One request on the agent's one connection. */
let request: ReturnType<typeof requestsOn>;
let root: Authority;
let sub: Authority;
let cas: string;
let crls: string;

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'postern-accounts-sub-'));
  s = await startAccounts(scratch);
  const paths = pkiPaths(s.caDir);
  root = await loadAuthority(await readFile(paths.caCert, 'utf8'), await readFile(paths.caKey, 'utf8'));
  sub = await createCertificateAuthority({ commonName: 'Accounts Sub CA', keyType: 'ecdsa', issuer: root, years: 2 });
  const device = await issueClientCertificate(sub, { commonName: USERS.alice, emailAddress: USERS.alice, keyType: 'ecdsa' });
  // The listener trusts the root and the intermediate (caFiles), with a CRL for each.
  cas = join(scratch, 'cas.pem');
  crls = join(scratch, 'crls.pem');
  await writeFile(cas, root.cert + sub.cert);
  await writeFile(crls, await createCrl(root, []) + await createCrl(sub, []));
  const generation = s.server.runtime.generation;
  const file = join(s.server.dir, 'postern.yaml');
  await writeFile(file, (await readFile(file, 'utf8')).replaceAll(paths.caCert, cas).replaceAll(paths.crl, crls));
  await until('the configuration with the intermediate is reloaded', () => s.server.runtime.generation !== generation, { timeoutMs: 60_000 });
  agent = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.cert + sub.cert, key: device.key, rejectUnauthorized: false });
  request = requestsOn(agent, s.url);
  // The page takes the new CA list a moment after the SMTP listener (its own reload hook): a new connection each look.
  await until('the page trusts the intermediate', async () => {
    const look = await request('/signin');
    agent.destroy(); // its connection: the next look makes a new one
    return /presented a certificate for <b>alice@example\.com<\/b>/.test(look.body);
  }, { timeoutMs: 60_000 });
});
after(async () => {
  agent?.destroy();
  await s?.server.stop();
  await rm(scratch, { recursive: true, force: true });
});

test('the root\'s CRL reloaded listing the intermediate: the certificate session ends, the open connection names no account', async () => {
  const { cookies, connection } = await certificateSession(request);

  const generation = s.server.runtime.generation;
  await writeFile(crls, await createCrl(root, [sub.serial]) + await createCrl(sub, []));
  await until('the CRL is reloaded', () => s.server.runtime.generation !== generation, { timeoutMs: 60_000 });

  await until('the certificate session to end', async () => (await request('/devices', { cookies })).location === '/signin', { timeoutMs: 60_000 });
  const again = await request('/signin');
  assert.equal(again.socket, connection, 'still the connection whose handshake verified the intermediate');
  assert.doesNotMatch(again.body, /presented a certificate for <b>alice@example\.com<\/b>/);
});

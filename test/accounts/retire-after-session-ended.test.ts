// Revoking or removing a device on the account page takes a folder's lock (the CA folder to rewrite the CRL, the pin
// table's folder to rewrite it), which `postern pki` / `postern pins` or another page request may hold: the request
// waits up to 15 s for it. The session was checked when the request came in, not once the lock was taken: a thief
// signed in with a leaked password whose revocation of the owner's phone waited for the lock still revoked it after
// the administrator had reset the password (or the owner had revoked the thief's device as stolen, which ends the
// thief's sessions, and whose own revocation is what held the lock). A change now runs only if its session still
// stands once the lock is held.
// The lock is held here as a `postern pki` command would hold it; the request is known to be in the page's hands by
// fastify's handler diagnostics channel, not by time.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { channel } from 'node:diagnostics_channel';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { acquireDirectoryLock } from '../../engine/spool/data-dir-lock.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';
import { addPin, issueDevice, listDevices, revokeDevice } from '../../engine/pki/index.ts';
import { until } from '../helpers/wait.ts';
import { startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';
import { PageClient } from './page-client.ts';

let s: AccountsSetup;
let dir = '';
let ca = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-retire-'));
  s = await startAccounts(dir, { authFailuresPerIp: 1000 });
  ca = await readFile(s.pki.ca.cert, 'utf8');
});
after(async () => {
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Resolves when the page's handler of `url` starts (fastify runs it in the same turn, up to its first wait). */
function handlerStarts(url: string): Promise<void> {
  const starts = channel('tracing:fastify.request.handler:start');
  return new Promise((resolve) => {
    const seen = (store: unknown): void => {
      if ((store as { route?: { url: string } }).route?.url !== url) return;
      starts.unsubscribe(seen);
      resolve();
    };
    starts.subscribe(seen);
  });
}

/** The administrator resets alice's password (a leaked one replaced), and the server reloads. */
async function resetAlicesPassword(password: string): Promise<void> {
  await writeFile(join(dir, 'users'), `${USERS.alice}:${await hashPassword(password)}\n${USERS.bob}:${await hashPassword(PASSWORDS.bob)}\n`);
  assert.equal((await s.server.reloader.reload('test')).ok, true);
}

/** `path` posted by `client` while `lockDir`'s lock is held; `meanwhile` runs once the request is in the page's hands. */
async function postWhileLocked(client: PageClient, path: string, route: string, lockDir: string, meanwhile: () => Promise<void>): Promise<number> {
  const csrf = await client.csrf('/devices');
  const lock = acquireDirectoryLock(lockDir, '.lock');
  let released = false;
  const release = (): void => { if (!released) lock.release(); released = true; };
  try {
    const runs = handlerStarts(route);
    const answer = client.request('POST', path, { _csrf: csrf, reason: 'cessationOfOperation' });
    await runs;
    await meanwhile();
    release();
    return (await answer).status;
  } finally {
    release();
  }
}

test('a revocation waiting for the CA folder\'s lock when the password is reset: the device is not revoked', async () => {
  await resetAlicesPassword(PASSWORDS.alice);
  const phone = await issueDevice(s.caDir, { identity: USERS.alice, device: 'phone', days: 30 });
  const thief = new PageClient(s.url, ca);
  assert.equal((await thief.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  const status = await postWhileLocked(thief, `/devices/cert-${phone.record.serial}/revoke`, '/devices/:id/revoke', s.caDir,
    () => resetAlicesPassword('a new secret 1'));
  assert.notEqual(status, 200, 'the revocation was not made');
  const row = (await listDevices(s.caDir, { identity: USERS.alice })).find((d) => d.serial === phone.record.serial);
  assert.equal(row?.status, 'valid', 'the owner\'s phone was revoked by a session ended while it waited');
});

test('a key removal waiting for the pin table folder\'s lock when the password is reset: the key stays pinned', async () => {
  await resetAlicesPassword(PASSWORDS.alice);
  const tablet = await createSelfSignedCertificate({ commonName: 'tablet', keyType: 'ecdsa' });
  const pin = await addPin(s.pinsFile, { identity: USERS.alice, certificateOrPin: tablet.cert, device: 'tablet' });
  const thief = new PageClient(s.url, ca);
  assert.equal((await thief.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  const status = await postWhileLocked(thief, `/devices/pin-${pin.pinSha256}/remove`, '/devices/:id/remove', dirname(s.pinsFile),
    () => resetAlicesPassword('a new secret 2'));
  assert.notEqual(status, 200, 'the removal was not made');
  assert.match(await readFile(s.pinsFile, 'utf8'), new RegExp(pin.pinBase64Url), 'the owner\'s key was unpinned by a session ended while it waited');
});

// The same for an addition: its turn among the account's additions re-checks the session (change-after-sign-out.test.ts),
// but the pin table's lock is waited for after that check.
test('a key registration waiting for the pin table folder\'s lock when the password is reset: not registered', async () => {
  await resetAlicesPassword(PASSWORDS.alice);
  const key = await createSelfSignedCertificate({ commonName: 'thief', keyType: 'ecdsa' });
  const thief = new PageClient(s.url, ca);
  assert.equal((await thief.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  const csrf = await thief.csrf('/devices');
  const lock = acquireDirectoryLock(dirname(s.pinsFile), '.lock');
  let released = false;
  const release = (): void => { if (!released) lock.release(); released = true; };
  try {
    const runs = handlerStarts('/devices/add');
    const answer = thief.request('POST', '/devices/add', { _csrf: csrf, device: 'thief-key', key: key.cert });
    await runs;
    await resetAlicesPassword('a new secret 3');
    release();
    assert.notEqual((await answer).status, 200, 'the registration was not made');
  } finally {
    release();
  }
  assert.doesNotMatch(await readFile(s.pinsFile, 'utf8'), /thief-key/, 'the thief\'s key was pinned to alice by a session ended while it waited');
});

// A revocation as lost or stolen ends the account's other sessions whoever makes it (compromised-sessions.ts), except
// the page's own, which ends them itself: it marked the serial as revoked by the page before revoking it, and a
// revocation that then failed (the CA folder's lock held past its 15 s wait) left the mark. When the administrator
// then revoked that certificate as stolen with `postern pki revoke`, the thief's sessions were not ended.
test('a revocation as stolen that failed on the page: the administrator\'s revocation of it as stolen still ends the account\'s sessions', { timeout: 120_000 }, async () => {
  await resetAlicesPassword(PASSWORDS.alice);
  const laptop = await issueDevice(s.caDir, { identity: USERS.alice, device: 'laptop', days: 30 });
  const owner = new PageClient(s.url, ca);
  assert.equal((await owner.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  const thief = new PageClient(s.url, ca);
  assert.equal((await thief.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  const csrf = await owner.csrf('/devices');
  const lock = acquireDirectoryLock(s.caDir, '.lock');
  // The page's wait for the lock given up after 1 s rather than 15: the lock is held until the answer came.
  process.env.POSTERN_FOLDER_LOCK_WAIT_MS = '1000';
  let failed: number;
  try {
    failed = (await owner.request('POST', `/devices/cert-${laptop.record.serial}/revoke`, { _csrf: csrf, reason: 'keyCompromise' })).status;
  } finally {
    delete process.env.POSTERN_FOLDER_LOCK_WAIT_MS;
    lock.release();
  }
  assert.equal(failed, 500, 'the page\'s revocation failed (the lock was not given up within its wait)');
  assert.equal((await listDevices(s.caDir, { identity: USERS.alice })).find((d) => d.serial === laptop.record.serial)?.status, 'valid');
  const generation = s.server.runtime.generation;
  await revokeDevice(s.caDir, { serial: laptop.record.serial }, { reason: 'keyCompromise' });
  await until('the reload of the CA inventory', () => s.server.runtime.generation !== generation && s.server.runtime.generation.revokedDevices.compromised.has(laptop.record.serial), { timeoutMs: 60_000 });
  const after = await thief.request('GET', '/devices');
  assert.equal(after.status, 303, 'the thief\'s session outlived the administrator\'s revocation of the laptop as stolen');
});

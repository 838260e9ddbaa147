// One account's device additions run one at a time (change-budget.ts), so a request may wait behind another. The
// session was checked when the request came in, not when its addition ran: a thief signed in with a leaked password
// who sent a key to register behind a slow issue had it pinned to the account after the administrator reset the
// password, and signed in with that key (a pin names the account) for good. An addition now runs only if its
// session still stands when its turn comes.
// The CA folder's lock is held here (as a `postern pki` command would) so the issue in front waits: requests are
// known to be in the page's hands by fastify's handler diagnostics channel, not by time.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { channel } from 'node:diagnostics_channel';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { acquireDirectoryLock } from '../../engine/spool/data-dir-lock.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';
import { startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';
import { PageClient } from './page-client.ts';

let s: AccountsSetup;
let dir = '';
let ca = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-in-flight-'));
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

test('a key registration waiting behind another addition when the password is reset: not registered', async () => {
  const thief = new PageClient(s.url, ca);
  assert.equal((await thief.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  const key = await createSelfSignedCertificate({ commonName: 'thief', keyType: 'ecdsa' });
  const csrf = await thief.csrf('/devices');

  const lock = acquireDirectoryLock(s.caDir, '.lock');
  let released = false;
  const release = (): void => { if (!released) lock.release(); released = true; };
  try {
    const issueRuns = handlerStarts('/devices/issue');
    const issue = thief.request('POST', '/devices/issue', { _csrf: csrf, device: 'decoy' });
    await issueRuns;
    const addRuns = handlerStarts('/devices/add');
    const add = thief.request('POST', '/devices/add', { _csrf: csrf, device: 'thief-key', key: key.cert });
    await addRuns;
    // The administrator resets alice's password while both wait.
    await writeFile(join(dir, 'users'), `${USERS.alice}:${await hashPassword('a new secret')}\n${USERS.bob}:${await hashPassword(PASSWORDS.bob)}\n`);
    assert.equal((await s.server.reloader.reload('test')).ok, true);
    release();
    await issue;
    const added = await add;
    assert.notEqual(added.status, 200, 'the registration was not made');
    const pins = await readFile(s.pinsFile, 'utf8');
    assert.doesNotMatch(pins, /thief-key/, 'the thief\'s key is not pinned to alice');
    assert.ok(s.server.logs.some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.identity === USERS.alice));
  } finally {
    release();
  }
});

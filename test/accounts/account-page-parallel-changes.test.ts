// The account page's device additions sent in parallel (a script, or a stolen session, posting the same form
// over many connections at once): one account's additions are one at a time, so a device name is still used
// once and accounts.deviceAdditionsPerHour still bounds them. Side by side, every request passed the checks
// before any was written or counted: ten "laptop" certificates, and 25 devices of a budget of 20.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pkiPaths, readInventory } from '../../engine/pki/index.ts';
import { startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';
import { PageClient } from './page-client.ts';

let s: AccountsSetup;
let dir = '';
let ca = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-parallel-'));
  s = await startAccounts(dir, { authFailuresPerIp: 1000 }, { deviceAdditionsPerHour: 3 });
  ca = await readFile(s.pki.ca.cert, 'utf8');
});
after(async () => {
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** `forms` posted to `path` at once, each on its own connection, with one CSRF token of the session: the statuses. */
async function inParallel(user: keyof typeof USERS, path: string, forms: Array<Record<string, string>>): Promise<number[]> {
  const page = new PageClient(s.url, ca);
  assert.equal((await page.signIn(USERS[user], PASSWORDS[user])).status, 303);
  const token = await page.csrf('/devices');
  return Promise.all(forms.map((form) => page.request('POST', path, { _csrf: token, ...form }).then((r) => r.status)));
}

const issuedTo = async (identity: string): Promise<string[]> =>
  (await readInventory(pkiPaths(join(dir, 'ca')))).certificates.filter((c) => c.identity === identity).map((c) => c.device);

test('one device name, issued six times at once: one certificate, the others refused as a name in use', async () => {
  const statuses = await inParallel('alice', '/devices/issue', Array.from({ length: 6 }, () => ({ device: 'laptop' })));
  assert.deepEqual(statuses.toSorted(), [303, 400, 400, 400, 400, 400]);
  assert.deepEqual(await issuedTo(USERS.alice), ['laptop']);
});

test('eight devices issued at once with a budget of three an hour: three issued, five refused with 429', async () => {
  const statuses = await inParallel('bob', '/devices/issue', Array.from({ length: 8 }, (_, i) => ({ device: `tablet-${i}` })));
  assert.deepEqual(statuses.toSorted(), [303, 303, 303, 429, 429, 429, 429, 429]);
  assert.equal((await issuedTo(USERS.bob)).length, 3);
});

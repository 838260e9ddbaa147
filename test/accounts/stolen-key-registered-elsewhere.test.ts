// A key removed on the page as lost or stolen is refused there at once (RevokedHere), until the page registers it
// again: its owner found the laptop. But "registered again" was anyone's registration: the page forgot the stolen key
// when another account pasted it (a public key or certificate is public: seen in a TLS handshake, or the thief's own
// account on the same server). While the pin table in force still named the victim (reloads refused by a half-edited
// users file, or before the reload's debounce), the stolen laptop then signed in to the page as the victim again.
// Now only the account that lost the key forgets it by registering it again.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certificateSession, requestsOn, startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';
import { PageClient } from './page-client.ts';
import { until } from '../helpers/wait.ts';

let s: AccountsSetup;
let dir = '';
let ca = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-stolen-elsewhere-'));
  s = await startAccounts(dir, { authFailuresPerIp: 1000 });
  ca = await readFile(s.pki.ca.cert, 'utf8');
});
after(async () => {
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const deviceConnection = (device: { certPem: string; keyPem: string }) =>
  requestsOn(new https.Agent({ keepAlive: true, maxSockets: 1, ca, cert: device.certPem, key: device.keyPem, servername: 'localhost' }), s.url);

async function certificateSignIn(request: ReturnType<typeof requestsOn>): Promise<{ location: string | undefined; cookies: string[] }> {
  const page = await request('/signin');
  const csrf = /name="_csrf" value="([^"]+)"/.exec(page.body)![1]!;
  const r = await request('/signin/certificate', { method: 'POST', cookies: page.cookies, body: `_csrf=${encodeURIComponent(csrf)}` });
  return { location: r.location, cookies: [...page.cookies, ...r.cookies] };
}

test('a key removed as stolen stays refused on the page when another account registers it', async (t) => {
  const laptop = { certPem: await readFile(s.pki.clients.alice.cert, 'utf8'), keyPem: await readFile(s.pki.clients.alice.key, 'utf8') };
  const alice = new PageClient(s.url, ca);
  assert.equal((await alice.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  assert.equal((await alice.post('/devices/add', { device: 'own-laptop', key: laptop.certPem })).status, 200);
  assert.equal((await s.server.reloader.reload('test')).ok, true);
  await certificateSession(deviceConnection(laptop));

  // The administrator saves the users file half-edited: reloads are refused, the pin table in force still names alice.
  const users = await readFile(join(dir, 'users'), 'utf8');
  await writeFile(join(dir, 'users'), `${USERS.alice}\n`);
  t.after(async () => {
    await writeFile(join(dir, 'users'), users);
    await until('the fixed users file in force', () => s.server.reloader.status.data.lastError === null, { timeoutMs: 60_000 });
  });
  await until('the half-edited users file refused', () => s.server.reloader.status.data.lastError !== null, { timeoutMs: 60_000 });

  const row = /<tr data-device="(pin-[0-9a-f]+)"><td>own-laptop</.exec((await alice.request('GET', '/devices')).body);
  assert.ok(row);
  assert.equal((await alice.post(`/devices/${row[1]}/remove`, { reason: 'keyCompromise' })).status, 200);
  assert.notEqual((await certificateSignIn(deviceConnection(laptop))).location, '/devices', 'removed as stolen: refused');

  // Bob (the thief, with an account of his own here) registers the laptop's certificate: it is public.
  const bob = new PageClient(s.url, ca);
  assert.equal((await bob.signIn(USERS.bob, PASSWORDS.bob)).status, 303);
  const registered = await bob.post('/devices/add', { device: 'laptop', key: laptop.certPem });
  assert.equal(registered.status, 200, registered.body);
  const onLaptop = deviceConnection(laptop);
  const again = await certificateSignIn(onLaptop);
  // Before: '/devices', signed in as alice (the pin table in force), free to issue itself a certificate.
  const page = (await onLaptop('/devices', { cookies: again.cookies })).body;
  assert.doesNotMatch(page, new RegExp(USERS.alice), 'the stolen key signed in as alice again after another account registered it');
  assert.notEqual(again.location, '/devices', 'the stolen key signs in to the page again after another account registered it');
});

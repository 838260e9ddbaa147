// A device revoked on the page is refused by the page at once, not only once a reload brings the new CRL in. The
// page judged certificates by the CRL of the generation in force: until the reload (its debounce at least; for as
// long as the administrator's half-edited users file or script keeps reloads refused) a certificate revoked as
// lost or stolen signed in again right after "Your account is signed out everywhere else", and its session issued
// itself a new certificate that outlives the revocation; a certificate session of a device revoked as replaced
// went on. A refused reload holds that window open here, so nothing depends on timing; the SMTP listeners keep
// the old CRL through it too, which the page did not say ("its next connection is refused") where `postern pki
// revoke` warns.
// And a device whose own key was registered (mox style) can be lost too: its Remove offered no "lost or stolen",
// so a browser left signed in by password on that laptop stayed signed in (twelve hours, adding devices), and the
// user had no way on the page to end it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { issueDevice, readInventory } from '../../engine/pki/index.ts';
import { certificateSession, requestsOn, startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';
import { PageClient } from './page-client.ts';
import { until } from '../helpers/wait.ts';

let s: AccountsSetup;
let dir = '';
let ca = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-revoked-'));
  s = await startAccounts(dir, { authFailuresPerIp: 1000 });
  ca = await readFile(s.pki.ca.cert, 'utf8');
});
after(async () => {
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Requests on one keep-alive TLS connection presenting `device`'s certificate (the thief's browser on the laptop). */
const deviceConnection = (device: { certPem: string; keyPem: string }) =>
  requestsOn(new https.Agent({ keepAlive: true, maxSockets: 1, ca, cert: device.certPem, key: device.keyPem, servername: 'localhost' }), s.url);

/** A certificate sign-in on `request`'s connection: where it leads (/devices when signed in), and its cookies. */
async function certificateSignIn(request: ReturnType<typeof requestsOn>): Promise<{ location: string | undefined; cookies: string[] }> {
  const page = await request('/signin');
  const csrf = /name="_csrf" value="([^"]+)"/.exec(page.body)![1]!;
  const r = await request('/signin/certificate', { method: 'POST', cookies: page.cookies, body: `_csrf=${encodeURIComponent(csrf)}` });
  return { location: r.location, cookies: [...page.cookies, ...r.cookies] };
}

test('revoked on the page while reloads are refused: the certificate no longer signs in there, its session ends, and the page says SMTP waits', async (t) => {
  const laptop = await issueDevice(s.caDir, { identity: USERS.alice, device: 'laptop' });
  const phone = await issueDevice(s.caDir, { identity: USERS.alice, device: 'phone' });
  assert.equal((await s.server.reloader.reload('test')).ok, true);
  const onLaptop = deviceConnection(laptop);
  const laptopSession = await certificateSession(onLaptop);
  const owner = new PageClient(s.url, ca);
  assert.equal((await owner.signIn(USERS.alice, PASSWORDS.alice)).status, 303);

  // The administrator saves the users file half-edited: every reload is refused until it is fixed.
  const users = await readFile(join(dir, 'users'), 'utf8');
  await writeFile(join(dir, 'users'), `${USERS.alice}\n`);
  t.after(async () => {
    await writeFile(join(dir, 'users'), users);
    await until('the fixed users file in force', () => s.server.reloader.status.data.lastError === null, { timeoutMs: 60_000 });
  });
  await until('the half-edited users file refused', () => s.server.reloader.status.data.lastError !== null, { timeoutMs: 60_000 });
  const generation = s.server.runtime.generation;

  const idOf = async (device: string): Promise<string> => {
    const id = new RegExp(`<tr data-device="([^"]+)"><td>${device}<`).exec((await owner.request('GET', '/devices')).body)?.[1];
    assert.ok(id, device);
    return id;
  };
  // Replaced: the laptop's certificate session ends at its next request.
  assert.equal((await owner.post(`/devices/${await idOf('laptop')}/revoke`, { reason: 'superseded' })).status, 200);
  assert.equal((await onLaptop('/devices', { cookies: laptopSession.cookies })).location, '/signin', 'the revoked certificate\'s session ended');

  // Lost or stolen: the account is signed out everywhere else, and the phone cannot sign back in to issue itself another.
  const onPhone = deviceConnection(phone);
  await certificateSession(onPhone);
  const stolen = await owner.post(`/devices/${await idOf('phone')}/revoke`, { reason: 'keyCompromise' });
  assert.equal(stolen.status, 200);
  assert.match(stolen.body, /signed out everywhere else/);
  // The SMTP listeners keep the CRL in force until the users file is fixed: the page must not say the phone is cut off.
  assert.doesNotMatch(stolen.body, /its next connection is refused/);
  assert.match(stolen.body, /until the administrator fixes it, the device can still send mail/);
  assert.ok(s.server.logs.some((l) => l.msg === 'account page: a revocation waits for the server\'s refused reload to be fixed' && l.device === 'phone'));
  assert.equal(s.server.runtime.generation, generation, 'the reload is still refused: the CRL in force is the old one');
  for (const [what, request] of [['its open connection', onPhone], ['a new connection', deviceConnection(phone)]] as const) {
    const page = await request('/signin');
    assert.doesNotMatch(page.body, /presented a certificate for/, what);
    assert.match(page.body, /names no account here \(revoked\)/, what);
    const again = await certificateSignIn(request);
    assert.notEqual(again.location, '/devices', `${what}: signed in again`);
    const issue = await request('/devices', { cookies: again.cookies });
    assert.equal(issue.location, '/signin', what);
  }
  assert.deepEqual((await readInventory(s.caDir)).certificates.map((c) => c.device), ['laptop', 'phone'], 'no certificate issued since');
});

test('a registered key removed as lost or stolen signs the account out everywhere else, and no longer signs in there', async () => {
  const laptop = { certPem: await readFile(s.pki.clients.alice.cert, 'utf8'), keyPem: await readFile(s.pki.clients.alice.key, 'utf8') };
  const owner = new PageClient(s.url, ca);
  assert.equal((await owner.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  assert.equal((await owner.post('/devices/add', { device: 'own-laptop', key: laptop.certPem })).status, 200);
  assert.equal((await s.server.reloader.reload('test')).ok, true);
  const onLaptop = deviceConnection(laptop);
  await certificateSession(onLaptop);
  const leftOnLaptop = new PageClient(s.url, ca); // the laptop's browser, signed in by password
  assert.equal((await leftOnLaptop.signIn(USERS.alice, PASSWORDS.alice)).status, 303);

  const devices = (await owner.request('GET', '/devices')).body;
  const row = /<tr data-device="(pin-[0-9a-f]+)"><td>own-laptop<[\s\S]*?<\/tr>/.exec(devices);
  assert.ok(row, devices);
  assert.match(row[0], /action="\/devices\/pin-[0-9a-f]+\/remove"[\s\S]*<option value="keyCompromise">lost or stolen<\/option>/, 'Remove asks why');
  const removed = await owner.post(`/devices/${row[1]}/remove`, { reason: 'keyCompromise' });
  assert.equal(removed.status, 200);
  assert.match(removed.body, /Device own-laptop removed: its next connection is refused\. Your account is signed out everywhere else\./);
  assert.equal((await owner.request('GET', '/devices')).status, 200, 'the session that removed it stays');
  assert.equal((await leftOnLaptop.request('GET', '/devices')).headers.location, '/signin', 'the laptop\'s browser is signed out');
  const again = await certificateSignIn(onLaptop);
  assert.notEqual(again.location, '/devices', 'the removed key signs in again');
  const line = s.server.logs.find((l) => l.msg === 'account page: device key removed' && l.device === 'own-laptop');
  assert.equal(line?.reason, 'keyCompromise', JSON.stringify(line));
  assert.ok(typeof line?.signedOut === 'number' && line.signedOut >= 1, JSON.stringify(line));
});

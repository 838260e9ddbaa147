// The account page in a real browser (Debian's Chromium, headless, driven by playwright-core) against a real
// Postern: sign in, issue a device certificate, download its .p12 once, send mail with it over SMTP (curl,
// AUTH EXTERNAL), revoke it and see the next SMTP handshake refused; register a device's own certificate as a
// pin and remove it; sign in with a client certificate. And what must be refused: a wrong password (counted
// with the SMTP auth failures), a POST without a CSRF token, another account's device id.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { run } from '../helpers/example.ts';
import { until } from '../helpers/wait.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { readInventory, listPins } from '../../engine/pki/index.ts';
import { launchChromium, needsBrowser, startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';

const opts = needsBrowser();
let s: AccountsSetup;
let browser: Browser;
let dir = '';

before(async () => {
  if (opts.skip) return;
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-'));
  s = await startAccounts(dir, { authFailuresPerIp: 4 });
  browser = await launchChromium();
  await writeFile(join(dir, 'msg.txt'), 'Subject: from a device\r\n\r\nhello\r\n');
});
after(async () => {
  await browser?.close();
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function newContext(extra: Parameters<Browser['newContext']>[0] = {}): Promise<BrowserContext> {
  // The page's certificate is the test PKI's "localhost" one: Chromium is not told to trust that CA.
  return browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true, ...extra });
}

async function signIn(page: Page, user: string, password: string): Promise<void> {
  await page.goto(`${s.url}/`);
  await page.fill('input[name=user]', user);
  await page.fill('input[name=password]', password);
  await page.click('#password-sign-in');
}

/** curl submitting one message with a client certificate and AUTH EXTERNAL; its verbose log. */
function curlSmtp(cert: string[]): Promise<{ code: number; output: string }> {
  return run('curl', ['-sS', '-v', '--url', `smtp://localhost:${s.smtpPort}/laptop.example`, '--ssl-reqd', '--cacert', s.pki.ca.cert,
    ...cert, '--login-options', 'AUTH=EXTERNAL', '--mail-from', USERS.alice, '--mail-rcpt', USERS.bob, '--upload-file', join(dir, 'msg.txt')]);
}

/** Waits for a reload: each look is a curl session (a TLS handshake) or a page load, so a quarter second apart, not 20 ms. */
const LOOKS = { intervalMs: 250 };

const csrfOf = (page: Page): Promise<string> => page.locator('input[name=_csrf]').first().inputValue();
const rowOf = (page: Page, name: string) => page.locator('#devices tbody tr', { hasText: name });

let alice: BrowserContext;
let alicePage: Page;
let laptop: { serial: string; p12: string; password: string };

test('a wrong password is refused, the right one signs in', opts, async () => {
  alice = await newContext();
  alicePage = await alice.newPage();
  await signIn(alicePage, USERS.alice, 'not the password');
  assert.match(await alicePage.locator('.error').innerText(), /Wrong account or password/);
  assert.equal(await alicePage.locator('input[name=password]').count(), 1, 'still the sign-in page');
  await signIn(alicePage, USERS.alice, PASSWORDS.alice);
  await alicePage.waitForURL(`${s.url}/devices`);
  assert.match(await alicePage.locator('h1').innerText(), /Devices of alice@example\.com/);
  assert.match(await alicePage.locator('#devices').innerText(), /No devices yet/);
  const signedIn = s.server.logs.find((l) => l.msg === 'account page: signed in');
  assert.equal(signedIn?.identity, USERS.alice);
  assert.equal(signedIn?.via, 'password');
});

test('issue a device: the .p12 downloads once, its password shows once; curl sends mail with it (AUTH EXTERNAL)', opts, async () => {
  await alicePage.fill('form[action="/devices/issue"] input[name=device]', 'laptop');
  await alicePage.click('#issue');
  await alicePage.waitForURL(/\/devices\/issued\/[\w-]+$/);
  const password = await alicePage.locator('#p12-password').innerText();
  // Reloaded (or the page left open on a shared screen): the password is not shown again, the file still waits.
  await alicePage.reload();
  assert.equal(await alicePage.locator('#p12-password').count(), 0);
  assert.match(await alicePage.locator('.error').innerText(), /shown once already/);
  assert.match(password, /^[a-z2-9]{5}(-[a-z2-9]{5}){3}$/);
  const [download] = await Promise.all([alicePage.waitForEvent('download'), alicePage.click('#download')]);
  const p12 = join(dir, 'laptop.p12');
  await download.saveAs(p12);
  assert.equal(download.suggestedFilename(), 'alice_example.com-laptop.p12');
  // The same link again: gone.
  const again = await alice.request.get(`${s.url}${await alicePage.locator('#download').getAttribute('href')}`);
  assert.equal(again.status(), 404);

  const inv = await readInventory(s.caDir);
  assert.equal(inv.certificates.length, 1);
  const record = inv.certificates[0]!;
  assert.equal(record.identity, USERS.alice);
  assert.equal(record.device, 'laptop');
  laptop = { serial: record.serial, p12, password };
  // The listener trusts the CA by emailAddress: no pin was needed.
  assert.equal((await listPins(s.pinsFile)).length, 0);
  const issued = s.server.logs.find((l) => l.msg === 'account page: device certificate issued');
  assert.equal(issued?.by, USERS.alice);
  assert.equal(issued?.serial, record.serial);

  // A real client: curl with the PKCS#12 as downloaded.
  const sent = await curlSmtp(['--cert', `${p12}:${password}`, '--cert-type', 'P12']);
  assert.match(sent.output, /< 235 2\.7\.0 Authentication successful/);
  assert.match(sent.output, /< 250 2\.0\.0 Ok: queued as /);
  assert.equal(sent.code, 0);
  // openssl reads it with the password, without the legacy provider.
  const info = await run('openssl', ['pkcs12', '-in', p12, '-info', '-nokeys', '-passin', `pass:${password}`]);
  assert.equal(info.code, 0, info.output);
  assert.match(info.output, /emailAddress ?= ?alice@example\.com/);
});

test('the device list shows it with pin, serial, expiry, last seen and listener', opts, async () => {
  // The server writes what it saw at most a second after the handshake.
  await until('the sighting to reach the page', async () => {
    await alicePage.goto(`${s.url}/devices`);
    return (await rowOf(alicePage, 'laptop').locator('td').nth(6).innerText()) === 'submission';
  }, LOOKS);
  const cells = await rowOf(alicePage, 'laptop').locator('td').allInnerTexts();
  const record = (await readInventory(s.caDir)).certificates[0]!;
  assert.equal(cells[0], 'laptop');
  assert.equal(cells[1], 'valid');
  assert.equal(cells[2], Buffer.from(record.pinSha256, 'hex').toString('base64url'));
  assert.equal(cells[3], record.serial);
  assert.equal(cells[4], record.notAfter.replace('T', ' ').replace(/\.\d+Z$/, 'Z'));
  assert.match(cells[5]!, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/);
  assert.equal(cells[6], 'submission');
});

let certificateSession: BrowserContext;

test('sign in with the client certificate (TLS client auth on the page)', opts, async () => {
  certificateSession = await newContext({ clientCertificates: [{ origin: s.url, pfxPath: laptop.p12, passphrase: laptop.password }] });
  const page = await certificateSession.newPage();
  await page.goto(`${s.url}/signin`);
  assert.match(await page.locator('body').innerText(), /presented a certificate for alice@example\.com/);
  await page.click('#certificate-sign-in');
  await page.waitForURL(`${s.url}/devices`);
  assert.match(await page.locator('h1').innerText(), /Devices of alice@example\.com/);
  const log = s.server.logs.findLast((l) => l.msg === 'account page: signed in');
  assert.equal(log?.via, 'certificate');
  assert.equal(log?.serial, laptop.serial);
});

test('a POST without the CSRF token is refused (curl with the session cookie, the browser\'s own request API)', opts, async () => {
  const cookies = await alice.cookies(s.url);
  const jar = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
  assert.match(jar, /__Host-postern-session=/);
  const noToken = await run('curl', ['-sS', '-k', '-o', '/dev/null', '-w', '%{http_code}', '-b', jar, '--data', 'device=sneaky', `${s.url}/devices/issue`]);
  assert.equal(noToken.stdout, '403');
  const badToken = await run('curl', ['-sS', '-k', '-o', '/dev/null', '-w', '%{http_code}', '-b', jar, '--data', 'device=sneaky&_csrf=abc-def', `${s.url}/devices/issue`]);
  assert.equal(badToken.stdout, '403');
  // The revoke form without its token: refused too.
  const revoke = await alice.request.post(`${s.url}/devices/cert-${laptop.serial}/revoke`, { form: { reason: 'keyCompromise' }, maxRedirects: 0 });
  assert.equal(revoke.status(), 403);
  // Nothing was issued or revoked.
  const inv = await readInventory(s.caDir);
  assert.deepEqual(inv.certificates.map((c) => [c.device, c.revoked]), [['laptop', null]]);
  // A sign-in without a token is refused before the password is looked at.
  const signIn = await run('curl', ['-sS', '-k', '-o', '/dev/null', '-w', '%{http_code}', '--data', `user=${USERS.alice}&password=${encodeURIComponent(PASSWORDS.alice)}`, `${s.url}/signin`]);
  assert.equal(signIn.stdout, '403');
});

test('another account\'s device id is refused', opts, async () => {
  const bob = await newContext();
  try {
    const page = await bob.newPage();
    await signIn(page, USERS.bob, PASSWORDS.bob);
    await page.waitForURL(`${s.url}/devices`);
    assert.match(await page.locator('#devices').innerText(), /No devices yet/, 'bob does not see alice\'s laptop');
    const token = await csrfOf(page);
    for (const action of ['revoke', 'remove']) {
      const r = await bob.request.post(`${s.url}/devices/cert-${laptop.serial}/${action}`, { form: { _csrf: token, reason: 'keyCompromise' }, maxRedirects: 0 });
      assert.equal(r.status(), 404, action);
      assert.match(await r.text(), /No such device on your account/);
    }
    // Alice's token in bob's session: refused as a CSRF failure.
    const aliceToken = await csrfOf(alicePage);
    const crossed = await bob.request.post(`${s.url}/devices/issue`, { form: { _csrf: aliceToken, device: 'x' }, maxRedirects: 0 });
    assert.equal(crossed.status(), 403);
    assert.equal((await readInventory(s.caDir)).certificates[0]!.revoked, null);
    assert.ok(s.server.logs.some((l) => l.msg === 'account page: refused a change to a device not of this account' && l.by === USERS.bob));
  } finally {
    await bob.close();
  }
});

test('register a device\'s own certificate by upload, and a public key by paste (mox style): each authenticates by its pin; removed, refused', opts, async () => {
  const made = async (name: string): Promise<{ key: string; crt: string }> => {
    const key = join(dir, `${name}.key`);
    const crt = join(dir, `${name}.crt`);
    // Self-signed, as the page's openssl lines make it: accepted by its pin only.
    const r = await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30',
      '-subj', `/CN=${USERS.alice}`, '-keyout', key, '-out', crt]);
    assert.equal(r.code, 0, r.output);
    return { key, crt };
  };
  const phone = await made('phone');
  const tablet = await made('tablet');
  const form = 'form[action="/devices/add"]';

  await alicePage.goto(`${s.url}/devices`);
  await alicePage.fill(`${form} input[name=device]`, 'phone');
  await alicePage.setInputFiles(`${form} input[name=file]`, phone.crt);
  await alicePage.click('#add-key');
  assert.match(await alicePage.locator('.notice').innerText(), /Device phone registered/);

  const publicKey = await run('openssl', ['pkey', '-in', tablet.key, '-pubout']);
  assert.match(publicKey.stdout, /BEGIN PUBLIC KEY/);
  await alicePage.fill(`${form} input[name=device]`, 'tablet');
  await alicePage.fill(`${form} textarea[name=key]`, publicKey.stdout);
  await alicePage.click('#add-key');
  assert.match(await alicePage.locator('.notice').innerText(), /Device tablet registered/);

  const pins = await listPins(s.pinsFile);
  assert.deepEqual(pins.map((p) => [p.identity, p.device]), [[USERS.alice, 'phone'], [USERS.alice, 'tablet']]);
  assert.equal(await rowOf(alicePage, 'phone').locator('td').nth(1).innerText(), 'pinned');
  assert.equal(await rowOf(alicePage, 'tablet').locator('td').nth(2).innerText(), pins[1]!.pinBase64Url);
  assert.ok(s.server.logs.some((l) => l.msg === 'account page: device key registered' && l.by === USERS.alice && l.device === 'tablet'));

  // The same key again, on any account: refused without naming whose it is.
  await alicePage.fill(`${form} input[name=device]`, 'phone2');
  await alicePage.setInputFiles(`${form} input[name=file]`, phone.crt);
  await alicePage.click('#add-key');
  assert.equal(await alicePage.locator('.error').innerText(), 'That key is already registered.');

  for (const device of [phone, tablet]) {
    const pem = ['--cert', device.crt, '--key', device.key];
    await until('the pinned key to be accepted (pin table reloaded)', async () => /< 235 /.test((await curlSmtp(pem)).output), LOOKS);
    assert.match((await curlSmtp(pem)).output, /< 250 2\.0\.0 Ok: queued as /);
  }

  await alicePage.goto(`${s.url}/devices`);
  await rowOf(alicePage, 'phone').getByRole('button', { name: 'Remove' }).click();
  assert.match(await alicePage.locator('.notice').innerText(), /Device phone removed/);
  assert.deepEqual((await listPins(s.pinsFile)).map((p) => p.device), ['tablet']);
  const phonePem = ['--cert', phone.crt, '--key', phone.key];
  await until('the removed key to be refused', async () => /< 421 4\.7\.1 Client certificate not trusted/.test((await curlSmtp(phonePem)).output), LOOKS);
  assert.match((await curlSmtp(['--cert', tablet.crt, '--key', tablet.key])).output, /< 235 /, 'the other device is untouched');
});

test('revoke the issued device: the next SMTP handshake with it is refused, its certificate session ends', opts, async () => {
  await alicePage.goto(`${s.url}/devices`);
  const row = rowOf(alicePage, 'laptop');
  // Replaced, not lost: lost or stolen would sign the certificate session out at once (account-page-sessions.test.ts);
  // here it must end through the CRL.
  await row.locator('select[name=reason]').selectOption('superseded');
  await row.getByRole('button', { name: 'Revoke' }).click();
  assert.match(await alicePage.locator('.notice').innerText(), /Device laptop revoked/);
  assert.equal(await rowOf(alicePage, 'laptop').locator('td').nth(1).innerText(), 'revoked');
  const record = (await readInventory(s.caDir)).certificates[0]!;
  assert.equal(record.revoked?.reason, 'superseded');
  const logged = s.server.logs.find((l) => l.msg === 'account page: device certificate revoked');
  assert.equal(logged?.by, USERS.alice);
  assert.equal(logged?.serial, laptop.serial);

  const p12 = ['--cert', `${laptop.p12}:${laptop.password}`, '--cert-type', 'P12'];
  await until('the revoked certificate to be refused (CRL reloaded)', async () => /< 421 4\.7\.1 Client certificate not trusted \(revoked\)/.test((await curlSmtp(p12)).output), LOOKS);
  const refused = await curlSmtp(p12);
  assert.notEqual(refused.code, 0);
  assert.doesNotMatch(refused.output, /< 235 /);

  // The session signed in with it ends at its next request.
  const signedOut = await certificateSession.newPage();
  // The page takes the new CRL a moment after the SMTP listener (its own reload hook).
  await until('the certificate session to end', async () => {
    await signedOut.goto(`${s.url}/devices`);
    return new URL(signedOut.url()).pathname === '/signin';
  }, LOOKS);
  assert.match(await signedOut.locator('body').innerText(), /names no account here \(revoked\)/);
  await certificateSession.close();
  assert.ok(s.server.logs.some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
  // And the page no longer names an account from it.
  const ctx = await newContext({ clientCertificates: [{ origin: s.url, pfxPath: laptop.p12, passphrase: laptop.password }] });
  try {
    const page = await ctx.newPage();
    await page.goto(`${s.url}/signin`);
    assert.equal(await page.locator('#certificate-sign-in').count(), 0);
    assert.match(await page.locator('body').innerText(), /names no account here \(revoked\)/);
  } finally {
    await ctx.close();
  }
});

test('failed sign-ins count with the SMTP auth failures: over the limit both refuse', opts, async () => {
  // The listener allows 4. One failure so far from the first test, and maybe one from the pin test's refused AUTH
  // EXTERNAL (refused at AUTH or at the handshake, depending on when its connection saw the reload): wrong
  // passwords until the page refuses, which must take at most three.
  const ctx = await newContext();
  const page = await ctx.newPage();
  let refused = false;
  for (let i = 0; i < 3 && !refused; i++) {
    await signIn(page, USERS.bob, 'guess');
    const error = await page.locator('.error').innerText();
    refused = /Too many failed sign-ins/.test(error);
    if (!refused) assert.match(error, /Wrong account or password/);
  }
  await signIn(page, USERS.bob, PASSWORDS.bob);
  assert.match(await page.locator('.error').innerText(), /Too many failed sign-ins/);
  // SMTP from the same address: refused at connect, by the same count.
  const smtp = await SmtpTestClient.connect(s.smtpPort);
  try {
    assert.match((await smtp.read()).text, /^421 4\.7\.0 Too many authentication failures/);
  } finally {
    smtp.destroy();
    await ctx.close();
  }
});

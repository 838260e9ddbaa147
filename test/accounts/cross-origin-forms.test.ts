// The account page's forms posted by another web page in a real browser (Chromium) where the user is signed
// in: from another site (https://localhost:N, the browser sends no SameSite=Strict cookie) and from the
// same site (https://127.0.0.1:N, another port of the page's host: the cookies go along, only the CSRF token
// can refuse). Revoke, issue, sign-out and a sign-in to the attacker's account are each refused; the device
// stays valid and the session stands.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { readInventory } from '../../engine/pki/index.ts';
import { PageClient } from './page-client.ts';
import { launchChromium, needsBrowser, startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';

const opts = needsBrowser();
let s: AccountsSetup;
let browser: Browser;
let dir = '';
let attacker: https.Server;
let attackerPort = 0;
/** What the attacker's page at /<name> auto-submits: a form to the account page. */
const forms = new Map<string, { action: string; fields: Record<string, string> }>();

before(async () => {
  if (opts.skip) return;
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-xorigin-'));
  s = await startAccounts(dir);
  browser = await launchChromium();
  attacker = https.createServer({ cert: await readFile(s.pki.server.cert), key: await readFile(s.pki.server.key) }, (req, res) => {
    const form = forms.get(req.url!.slice(1));
    const inputs = Object.entries(form?.fields ?? {}).map(([k, v]) => `<input type="hidden" name="${k}" value="${v}">`).join('');
    res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><form id="f" method="post" action="${form?.action}">${inputs}</form>
<script>document.getElementById('f').submit()</script>`);
  });
  await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.1', resolve));
  attackerPort = (attacker.address() as { port: number }).port;
});
after(async () => {
  await browser?.close();
  attacker?.close();
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The attacker's page `name` opened in the user's browser; the account page's answer to its form, as shown. */
async function visit(page: Page, origin: string, name: string, action: string, fields: Record<string, string>): Promise<{ url: string; text: string }> {
  forms.set(name, { action: `${s.url}${action}`, fields });
  await Promise.all([page.waitForURL((u) => u.href.startsWith(s.url)), page.goto(`${origin}/${name}`)]);
  await page.waitForLoadState();
  return { url: page.url(), text: await page.locator('body').innerText() };
}

test('another site\'s and the same site\'s forms revoke, issue, sign out and sign in nothing', opts, async () => {
  const context: BrowserContext = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${s.url}/signin`);
  await page.fill('input[name=user]', USERS.alice);
  await page.fill('input[name=password]', PASSWORDS.alice);
  await Promise.all([page.waitForURL(`${s.url}/devices`), page.click('#password-sign-in')]);
  await page.fill('form[action="/devices/issue"] input[name=device]', 'laptop');
  await Promise.all([page.waitForURL(/\/devices\/issued\//), page.click('#issue')]);
  const [laptop] = (await readInventory(s.caDir)).certificates;
  assert.ok(laptop);

  for (const [site, origin] of [['another site', `https://localhost:${attackerPort}`], ['the same site', `https://127.0.0.1:${attackerPort}`]] as const) {
    for (const [name, action, fields] of [
      ['revoke', `/devices/cert-${laptop.serial}/revoke`, { reason: 'keyCompromise' }],
      ['issue', '/devices/issue', { device: 'planted' }],
      ['signout', '/signout', {}],
      // A token of the attacker's own session is bound to that session: refused as well.
      ['revoke-with-token', `/devices/cert-${laptop.serial}/revoke`, { reason: 'keyCompromise', _csrf: await attackerToken() }],
      // Login CSRF: the user signed into the attacker's account (where their next device would go), with a
      // sign-in token the attacker fetched signed out.
      ['signin', '/signin', { user: USERS.bob, password: PASSWORDS.bob, _csrf: await new PageClient(s.url, await readFile(s.pki.ca.cert, 'utf8')).csrf('/signin') }],
    ] as const) {
      const answer = await visit(page, origin, `${name}-${site.replaceAll(' ', '-')}`, action, fields);
      assert.match(answer.text, /did not come from this page/, `${name} from ${site}: ${answer.text}`);
    }
  }
  const after = (await readInventory(s.caDir)).certificates;
  assert.deepEqual(after.map((c) => [c.device, c.revoked]), [['laptop', null]], 'nothing revoked, nothing issued');
  await page.goto(`${s.url}/devices`);
  assert.equal(page.url(), `${s.url}/devices`, 'still signed in');
  assert.match(await page.locator('h1').innerText(), /Devices of alice@example\.com/, 'as alice');
  await context.close();
});

/** The CSRF token of a session the attacker holds (bob's, signed in from elsewhere). */
async function attackerToken(): Promise<string> {
  const bob = new PageClient(s.url, await readFile(s.pki.ca.cert, 'utf8'));
  assert.equal((await bob.signIn(USERS.bob, PASSWORDS.bob)).status, 303);
  return bob.csrf('/devices');
}

// Every answer of the account page carries its protections (no-store, a CSP with no script, no framing, no
// sniffing, no referrer, HSTS), the ones fastify itself makes too: a URL the router cannot decode or a
// parameter past its length was answered by fastify's own JSON, before any hook, echoing the URL bare. And
// a body no form sends (fastify parsed JSON and text/plain too) is refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAccounts, PASSWORDS, USERS, type AccountsSetup } from './helpers.ts';
import { PageClient, type PageAnswer } from './page-client.ts';
import { needs, run } from '../helpers/example.ts';

let s: AccountsSetup;
let dir = '';
let page: PageClient;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-responses-'));
  s = await startAccounts(dir);
  page = new PageClient(s.url, await readFile(s.pki.ca.cert, 'utf8'));
});
after(async () => {
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function protectedAnswer(r: PageAnswer, what: string): void {
  assert.equal(r.headers['cache-control'], 'no-store', what);
  assert.match(String(r.headers['content-security-policy']), /default-src 'none'.*frame-ancestors 'none'/, what);
  assert.doesNotMatch(String(r.headers['content-security-policy']), /script-src/, what);
  assert.equal(r.headers['x-frame-options'], 'DENY', what);
  assert.equal(r.headers['x-content-type-options'], 'nosniff', what);
  assert.equal(r.headers['referrer-policy'], 'no-referrer', what);
  assert.match(String(r.headers['strict-transport-security']), /max-age=\d+/, what);
}

test('pages, redirects, refusals and the router\'s own errors all carry the page\'s headers; no error echoes the URL as markup', async () => {
  const answers: Array<[string, PageAnswer]> = [
    ['sign-in page', await page.request('GET', '/signin')],
    ['redirect', await page.request('GET', '/')],
    ['unknown page', await page.request('GET', '/nothing<b>here</b>')],
    ['CSRF refusal', await page.request('POST', '/signin', { user: USERS.alice, password: PASSWORDS.alice })],
    ['undecodable URL', await page.request('GET', '/%zz<script>alert(1)</script>')],
    ['undecodable parameter', await page.request('POST', '/devices/%zz%3Cscript%3E/revoke', {})],
    ['parameter too long', await page.request('GET', `/devices/issued/${'x'.repeat(200)}`)],
  ];
  for (const [what, r] of answers) {
    protectedAnswer(r, what);
    assert.doesNotMatch(r.body, /<script|<b>here/i, what);
  }
  const bad = answers.find(([w]) => w === 'undecodable URL')![1];
  assert.equal(bad.status, 400);
  assert.match(String(bad.headers['content-type']), /^text\/html/);
  assert.match(bad.body, /Not an address of this page/);
});

test('a form\'s fields in a body no form sends (JSON, text/plain) are refused with 415, the CSRF token with them: nothing is issued', async () => {
  const alice = new PageClient(s.url, await readFile(s.pki.ca.cert, 'utf8'));
  assert.equal((await alice.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
  const _csrf = await alice.csrf('/devices');
  const bodies = [
    { type: 'application/json', body: JSON.stringify({ _csrf, device: 'by-json' }) },
    { type: 'text/plain', body: new URLSearchParams({ _csrf, device: 'by-text' }).toString() },
  ];
  for (const raw of bodies) {
    const r = await alice.request('POST', '/devices/issue', undefined, raw);
    assert.equal(r.status, 415, raw.type);
    protectedAnswer(r, raw.type);
  }
  assert.doesNotMatch((await alice.request('GET', '/devices')).body, /by-json|by-text/);
  assert.equal((await alice.post('/devices/issue', { device: 'by-form' })).status, 303, 'the form itself still works');
});

test('a host name not of the page (DNS rebinding: attacker.example rebound to the page\'s address) is refused with 421; its certificate\'s names, the hostname and addresses are served', needs('curl'), async () => {
  const port = new URL(s.url).port;
  /** curl to https://<name>:<port>/signin, the name resolved to the page's address: status, headers and body. */
  const as = async (name: string): Promise<{ status: string; text: string }> => {
    const r = await run('curl', ['-sS', '-k', '-i', '--resolve', `${name}:${port}:127.0.0.1`, `https://${name}:${port}/signin`]);
    return { status: /^HTTP\/1\.1 (\d+)/.exec(r.stdout)?.[1] ?? r.output, text: r.stdout };
  };
  const logged = s.server.logs.length;
  const rebound = await as('attacker.example');
  assert.equal(rebound.status, '421');
  assert.match(rebound.text, /does not answer to that name/);
  assert.doesNotMatch(rebound.text, /name="_csrf"/, 'no form, no token');
  assert.match(rebound.text, /content-security-policy: default-src 'none'/i);
  assert.ok(s.server.logs.slice(logged).some((l) => l.msg === 'account page: refused a request for a host name not of its certificate' && l.host === `attacker.example:${port}`));
  for (const name of ['mail.example.com', 'MAIL.Example.COM', 'localhost', '127.0.0.1']) assert.equal((await as(name)).status, '200', name);
});

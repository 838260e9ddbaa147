// The account page over HTTP: hostile and keep-alive clients, parallel changes, its responses and answers
// left unread. One file for what were several (one test process and one load of the engine instead of one each), each
// its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import https from 'node:https';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { closed, until } from '../helpers/wait.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';
import { startAccounts, type AccountsSetup, USERS, PASSWORDS } from './helpers.ts';
import { issueDevice, revokeDevice, pkiPaths, readInventory } from '../../engine/pki/index.ts';
import { PageClient, type PageAnswer } from './page-client.ts';
import { needs, run } from '../helpers/example.ts';

describe('account-page-hostile-clients', () => {
  // The account page faces the users' networks: a client that never finishes its TLS handshake, or sends its
  // request a byte at a time, is cut off (each within 10 s) while others are served; at most 256 connections
  // are open, so a crowd cannot take the file descriptors the SMTP listeners need, and at most
  // accounts.maxConnectionsPerIp (16) from one address, so one client cannot be that crowd. Over either a new
  // connection takes the place of the one that has asked nothing for longest: silent connections from 16
  // addresses, opened again as the timeouts cut them, kept every user off the page. A client certificate whose fields cannot be read counts as none (the page still serves the password
  // sign-in).
  let s: AccountsSetup;
  let dir = '';
  let ca = '';
  let port = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'postern-accounts-limits-'));
    s = await startAccounts(dir);
    ca = await readFile(s.pki.ca.cert, 'utf8');
    port = Number(new URL(s.url).port);
  });
  after(async () => {
    await s?.server.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** GET `path` on a fresh connection (presenting `client`'s certificate, from `localAddress`): the status code and the page. */
  function fetchPage(path: string, client: { cert?: string; key?: string; localAddress?: string } = {}): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      https.get({ host: '127.0.0.1', port, path, ca, servername: 'localhost', agent: false, ...client }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { body += d; });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      }).on('error', reject);
    });
  }

  const get = async (path: string): Promise<number> => (await fetchPage(path)).status;

  /** A TCP connection that sends nothing, from `localAddress` (another loopback address is another client). */
  function rawConnection(localAddress = '127.0.0.1'): Promise<net.Socket> {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress });
    socket.on('error', () => undefined);
    return once(socket, 'connect').then(() => socket);
  }

  test('a TLS handshake never started, and a request body sent a byte at a time: both closed; others are served meanwhile', { timeout: 120_000 }, async () => {
    const silent = await rawConnection();
    const silentClosed = closed(silent);

    const slow = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' });
    await once(slow, 'secureConnect');
    let reply = '';
    slow.setEncoding('utf8');
    slow.on('data', (d: string) => { reply += d; });
    slow.on('error', () => undefined);
    slow.write('POST /signin HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n');
    const drip = setInterval(() => { if (!slow.destroyed) slow.write('a'); }, 500);
    const slowClosed = closed(slow);

    assert.equal(await get('/signin'), 200, 'another client is served while the slow ones hold their connections');
    await silentClosed;
    await slowClosed;
    clearInterval(drip);
    assert.match(reply, /^HTTP\/1\.1 408 /, 'the slow request is answered 408 before the close');
    assert.equal(await get('/signin'), 200);
  });

  test('beyond 256 silent connections (16 addresses) a user from another address gets the page; the oldest silent one is closed for it', { timeout: 120_000 }, async () => {
    const crowd: net.Socket[] = [];
    for (let i = 0; i < 256; i++) crowd.push(await rawConnection(`127.0.1.${1 + (i % 16)}`));
    const closedOnes: number[] = [];
    crowd.forEach((c, i) => c.once('close', () => closedOnes.push(i)));
    try {
      assert.equal((await fetchPage('/signin', { localAddress: '127.0.1.99' })).status, 200);
      await until('the oldest of the crowd closed for it', () => closedOnes.length > 0);
      assert.deepEqual(closedOnes, [0], 'the oldest alone, not by a timeout');
    } finally {
      for (const c of crowd) c.destroy();
    }
  });

  test('beyond 16 silent connections from one address a user from it gets the page, the oldest closed for it; other addresses are served and close none', { timeout: 120_000 }, async () => {
    const crowd: net.Socket[] = [];
    for (let i = 0; i < 16; i++) crowd.push(await rawConnection('127.0.2.1'));
    const closedOnes: number[] = [];
    crowd.forEach((c, i) => c.once('close', () => closedOnes.push(i)));
    try {
      assert.equal((await fetchPage('/signin', { localAddress: '127.0.2.1' })).status, 200, 'a 17th from that address is served');
      await until('the oldest of that address closed for it', () => closedOnes.length > 0);
      assert.equal((await fetchPage('/signin', { localAddress: '127.0.2.2' })).status, 200, 'another address is served');
      assert.deepEqual(closedOnes, [0], 'only the oldest of that address, not by a timeout');
    } finally {
      for (const c of crowd) c.destroy();
    }
    const warned = s.server.logs.filter((l) => l.msg === 'account page: too many connections from this address, the one idle longest closed for each new one');
    assert.deepEqual(warned.map((l) => [l.client, l.limit]), [['127.0.2.1', 16]], 'one warning for the episode');
  });

  // Closing the connection that had gone longest without progress chose, once 16 newer connections of its address
  // were open, one whose TLS handshake had just ended: a flood of silent connections from a shared address (NAT)
  // closed every user's connection between its handshake and its request. A connection that never sent a byte
  // now goes first.
  test('a connection whose handshake is done keeps its place while newer silent ones of its address fill the cap: a silent one is closed, and its request answered', { timeout: 120_000 }, async () => {
    const user = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress: '127.0.2.5' }), ca, servername: 'localhost' });
    user.on('error', () => undefined);
    // TLS 1.3: the server sends its session tickets once it has the client's Finished, its handshake done.
    await once(user, 'session');
    let userClosed = false;
    user.once('close', () => { userClosed = true; });
    const crowd: net.Socket[] = [];
    const closedOnes: number[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const c = await rawConnection('127.0.2.5');
        c.once('close', () => closedOnes.push(i));
        crowd.push(c);
        // Two turns of this (the server's) event loop: the server has read what it sent (nothing).
        for (let turn = 0; turn < 2; turn++) await new Promise((r) => setImmediate(r));
      }
      await until('one closed for the 17th', () => closedOnes.length > 0 || userClosed);
      assert.equal(userClosed, false, 'the handshaken connection is not the one closed');
      assert.deepEqual(closedOnes, [0], 'the oldest silent one is');
      user.write('GET /signin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
      let reply = '';
      user.setEncoding('utf8');
      user.on('data', (d: string) => { reply += d; });
      await once(user, 'close');
      assert.match(reply, /^HTTP\/1\.1 200 /);
    } finally {
      user.destroy();
      for (const c of crowd) c.destroy();
    }
  });

  test('a client certificate OpenSSL takes but whose fields cannot be read counts as none: the sign-in page, not an error', async () => {
    const good = await createSelfSignedCertificate({ commonName: 'mangled', keyType: 'ecdsa' });
    const der = Buffer.from(good.cert.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
    der.write('AAAAAAAAAAAAZ', der.indexOf(Buffer.from([0x17, 0x0d])) + 2, 'latin1'); // the notBefore UTCTime
    const cert = `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE-----\n`;
    const page = await fetchPage('/signin', { cert, key: good.key });
    assert.equal(page.status, 200, page.body);
    assert.match(page.body, /name="password"/);
  });

  test('a client-initiated TLS 1.2 renegotiation is refused (a full handshake each, on a connection already open)', async () => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost', maxVersion: 'TLSv1.2' });
    await once(socket, 'secureConnect');
    assert.equal(socket.getProtocol(), 'TLSv1.2');
    const err = await new Promise<Error | null>((resolve) => {
      socket.once('error', resolve);
      if (!socket.renegotiate({ rejectUnauthorized: false }, (e) => resolve(e ?? null))) resolve(new Error('not started'));
    });
    assert.match(String(err?.message), /renegotiat/i, 'the renegotiation must fail');
    socket.destroy();
  });
});

describe('account-page-keepalive', () => {
  // A connection kept alive across a revocation: its TLS verdict is the handshake's, so the page checks the
  // certificate against the CRLs loaded now, and no longer offers a certificate sign-in on that connection.
  function get(agent: https.Agent, url: string): Promise<{ body: string; reused: boolean }> {
    return new Promise((resolve, reject) => {
      const req = https.get(url, { agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => { body += c; });
        res.on('end', () => resolve({ body, reused: req.reusedSocket }));
      });
      req.on('error', reject);
    });
  }

  test('a certificate revoked while its connection stays open names no account on that connection', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-accounts-keepalive-'));
    const s = await startAccounts(dir);
    const device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'desk' });
    // One connection, kept: the page's certificate is the test PKI's "localhost"; the device's is presented.
    const agent = new https.Agent({
      keepAlive: true, maxSockets: 1, ca: await readFile(s.pki.ca.cert, 'utf8'), servername: 'localhost', cert: device.certPem, key: device.keyPem,
    });
    try {
      const first = await get(agent, `${s.url}/signin`);
      assert.match(first.body, /presented a certificate for <b>alice@example\.com<\/b>/);
      await revokeDevice(s.caDir, { serial: device.record.serial }, { reason: 'keyCompromise' });
      await until('the page to see the revocation', async () => {
        const again = await get(agent, `${s.url}/signin`);
        assert.equal(again.reused, true, 'the same connection, its handshake from before the revocation');
        return /names no account here \(revoked\)/.test(again.body);
      });
    } finally {
      agent.destroy();
      await s.server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('account-page-parallel-changes', () => {
  // The account page's device additions sent in parallel (a script, or a stolen session, posting the same form
  // over many connections at once): one account's additions are one at a time, so a device name is still used
  // once and accounts.deviceAdditionsPerHour still bounds them. Side by side, every request passed the checks
  // before any was written or counted: ten "laptop" certificates, and 25 devices of a budget of 20.
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
});

describe('account-page-responses', () => {
  // Every answer of the account page carries its protections (no-store, a CSP with no script, no framing, no
  // sniffing, no referrer, HSTS), the ones fastify itself makes too: a URL the router cannot decode or a
  // parameter past its length was answered by fastify's own JSON, before any hook, echoing the URL bare. And
  // a body no form sends (fastify parsed JSON and text/plain too) is refused.
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
});

describe('account-page-unread-answers', () => {
  // A client of the account page that pipelines requests and never reads the answers: once the socket buffers were
  // full the server could write no more and read no more, and no timeout applied (the requests were whole, the
  // connection not idle; keepAliveTimeout counts only after an answer has left), so the connection, and the answers
  // queued for it, were held for good. The admin listener had a deadline for this (RESPONSE_DEADLINE_MS); the
  // account page, which faces the users' networks, had none. Each answer now has that long to leave, on both.
  // Here the page's deadline is DEADLINE_MS (POSTERN_RESPONSE_DEADLINE_MS) rather than the product's 30 s, which was
  // waited out idle (a third of this file's 35 s): the fault is "for good", not 30 s. The product's value is checked
  // in test/connection-limits/response-deadline.test.ts.
  let s: AccountsSetup;
  let dir = '';
  let ca = '';
  let port = 0;

  /** The page's response deadline here: long enough for the sign-in page on a loaded machine. */
  const DEADLINE_MS = 3000;

  before(async () => {
    // Read by the page at each request (connection-room.ts); the server runs in this process.
    process.env.POSTERN_RESPONSE_DEADLINE_MS = String(DEADLINE_MS);
    dir = await mkdtemp(join(tmpdir(), 'postern-accounts-unread-'));
    s = await startAccounts(dir);
    ca = await readFile(s.pki.ca.cert, 'utf8');
    port = Number(new URL(s.url).port);
  });
  after(async () => {
    await s?.server.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a client that pipelines requests and never reads the answers is closed once an answer cannot leave', { timeout: DEADLINE_MS + 120_000 }, async () => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' });
    socket.on('error', () => undefined);
    await once(socket, 'secureConnect');
    socket.pause(); // never reads
    // The sign-in page (some KB) 5000 times: far more than any socket buffers hold. Fifty at a time, as a client
    // sends them while its requests are read (paced: a burst of a thousand Node's parser resets at once).
    const request = 'GET /signin HTTP/1.1\r\nHost: localhost\r\n\r\n';
    for (let i = 0; i < 100 && !socket.destroyed; i++) {
      socket.write(request.repeat(50));
      await sleep(30);
    }
    // A client that does not read does not see the close either: it learns of it when a write fails (a CRLF between
    // requests, which HTTP ignores). The deadline is a guard: without the fix the connection stays open for good.
    await until('the page closed the connection', () => socket.destroyed || (socket.write('\r\n'), false),
      { timeoutMs: DEADLINE_MS + 60_000, intervalMs: 250 });
    assert.ok(socket.destroyed);
  });
});

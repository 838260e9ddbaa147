// Account sessions and revocation: a CA withdrawn, the session's certificate identity, a change after sign-out, a
// handshake before a reload, retiring after a session ended, revocation before a reload and of an intermediate, a key
// stolen and registered elsewhere. One file for what were several (one test process and one load of the engine
// instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { channel } from 'node:diagnostics_channel';
import tls from 'node:tls';
import { certificateSession, requestsOn, startAccounts, USERS, type AccountsSetup, PASSWORDS } from './helpers.ts';
import { issueDevice, pkiPaths, addPin, listDevices, revokeDevice, readInventory } from '../../engine/pki/index.ts';
import { until, closed } from '../helpers/wait.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { acquireDirectoryLock } from '../../engine/spool/data-dir-lock.ts';
import { createSelfSignedCertificate, createCertificateAuthority, createCrl, issueClientCertificate, loadAuthority, type Authority } from '../../engine/certificates/index.ts';
import { PageClient } from './page-client.ts';

describe('ca-withdrawn', () => {
  // The account page and a CA taken out of the listener's caFiles: a session signed in with a certificate that
  // CA verified ends at its next request, and a keep-alive connection whose handshake that CA verified no
  // longer names an account (its verdict is its handshake's). Node's https client with the device certificate
  // issued by the server's CA (engine/pki), one keep-alive connection throughout. And the same for a certificate
  // that ends while in use: before, the session (kept alive by requests, able to issue fresh two-year
  // certificates) and the connection went on past its end, which a new handshake (CERT_HAS_EXPIRED) refuses.
  let s: AccountsSetup;
  let scratch: string;
  let agent: https.Agent;
  /** One request on the agent's one connection. */
  let request: ReturnType<typeof requestsOn>;

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'postern-accounts-ca-'));
    s = await startAccounts(scratch);
    const device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'laptop' });
    agent = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
    request = requestsOn(agent, s.url);
  });
  after(async () => {
    agent?.destroy();
    await s?.server.stop();
    await rm(scratch, { recursive: true, force: true });
  });

  test('a certificate session ends at the certificate\'s end, and the open connection names no account past it', async () => {
    // Whole seconds: X.509 times have no fractions.
    const notAfter = new Date(Math.ceil((Date.now() + 6000) / 1000) * 1000);
    const device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'ending', notAfter });
    const ending = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
    try {
      const on = requestsOn(ending, s.url);
      const { cookies, connection } = await certificateSession(on);
      // Polled on the one connection (its keep-alive never idles out); the deadline is a guard, not a measure.
      await until('the certificate session to end', async () => (await on('/devices', { cookies })).location === '/signin', { timeoutMs: 60_000 });
      assert.ok(Date.now() >= notAfter.getTime(), 'not before the certificate\'s end');
      const again = await on('/signin');
      assert.equal(again.socket, connection, 'still the connection whose handshake verified the certificate');
      assert.match(again.body, /names no account here \(expired\)/);
      assert.ok(s.server.logs.some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
    } finally {
      ending.destroy();
    }
  });

  test('a certificate session ends, and the open connection names no account, once its CA is out of caFiles', async () => {
    const logged = s.server.logs.length;
    const { cookies, connection } = await certificateSession(request);

    // The listener no longer trusts the server's CA (another CA and its CRL in its place).
    const generation = s.server.runtime.generation;
    const file = join(s.server.dir, 'postern.yaml');
    const paths = pkiPaths(s.caDir);
    await writeFile(file, (await readFile(file, 'utf8')).replaceAll(paths.caCert, s.pki.otherCa.cert).replaceAll(paths.crl, s.pki.otherCa.crl));
    await until('the configuration without the CA is reloaded', () => s.server.runtime.generation !== generation, { timeoutMs: 60_000 });

    // The page takes the new CA list a moment after the SMTP listener (its own reload hook).
    await until('the certificate session to end', async () => (await request('/devices', { cookies })).location === '/signin', { timeoutMs: 60_000 });
    const again = await request('/signin');
    assert.equal(again.socket, connection, 'still the connection whose handshake the old CA verified');
    assert.doesNotMatch(again.body, /presented a certificate for <b>alice@example\.com<\/b>/);
    assert.ok(s.server.logs.slice(logged).some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
  });
});

describe('certificate-session-identity', () => {
  // A page session signed in by certificate stands only while a new sign-in with that certificate would name the
  // same account, as an open SMTP session follows its certificate's account (test/smtp/revoked-certificates.test.ts, certificate-verdict-since).
  // Before, the check of a session signed in by a field was only `field !== 'none'`: a reload that made the listener
  // name another account from the certificate (certificateIdentity.field from emailAddress to CN) left the session
  // signed in as the old account, able to issue itself devices, when a new sign-in with that certificate is mallory.
  // Node's https client with a device certificate of the server's CA (engine/pki), one keep-alive connection.
  let s: AccountsSetup;
  let scratch: string;
  let agent: https.Agent;
  let request: ReturnType<typeof requestsOn>;
  let config = '';
  let usual = '';

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'postern-accounts-identity-'));
    s = await startAccounts(scratch);
    // Its emailAddress (and SAN e-mail) names alice; its CN is "mallory", another account once the listener reads the CN.
    const device = await issueDevice(s.caDir, { identity: 'mallory', emails: [USERS.alice], device: 'laptop' });
    agent = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
    request = requestsOn(agent, s.url);
    config = join(s.server.dir, 'postern.yaml');
    usual = await readFile(config, 'utf8');
  });
  after(async () => {
    agent?.destroy();
    await s?.server.stop();
    await rm(scratch, { recursive: true, force: true });
  });

  /** The configuration with each `from` replaced by its `to`, reloaded (and taken by the page). */
  async function reloadWith(...changes: [from: string, to: string][]): Promise<void> {
    let text = usual;
    for (const [from, to] of changes) {
      assert.ok(text.includes(from), `${from} in the configuration`);
      text = text.replace(from, to);
    }
    await writeFile(config, text);
    const reloaded = await s.server.reloader.reload('test');
    assert.equal(reloaded.ok, true, JSON.stringify(reloaded));
  }

  async function reloadUsual(): Promise<void> {
    await writeFile(config, usual);
    assert.equal((await s.server.reloader.reload('test')).ok, true);
  }

  test('certificateIdentity.field reloaded to another field: the session stays while it names the same account, ends once it names another', async () => {
    const { cookies } = await certificateSession(request);
    try {
      await reloadWith(['field: emailAddress', 'field: sanEmail']);
      assert.equal((await request('/devices', { cookies })).status, 200, 'sanEmail names alice too: still signed in');
      const logged = s.server.logs.length;
      await reloadWith(['field: emailAddress', 'field: CN']);
      const look = await request('/signin');
      assert.doesNotMatch(look.body, /presented a certificate for <b>alice@example\.com<\/b>/, 'a new sign-in would not be alice');
      const after = await request('/devices', { cookies });
      assert.equal(after.location, '/signin', 'the CN names mallory: alice\'s session must end');
      assert.ok(s.server.logs.slice(logged).some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
    } finally {
      await reloadUsual();
    }
  });
});

describe('change-after-sign-out', () => {
  // One account's device additions run one at a time (change-budget.ts), so a request may wait behind another. The
  // session was checked when the request came in, not when its addition ran: a thief signed in with a leaked password
  // who sent a key to register behind a slow issue had it pinned to the account after the administrator reset the
  // password, and signed in with that key (a pin names the account) for good. An addition now runs only if its
  // session still stands when its turn comes.
  // The CA folder's lock is held here (as a `postern pki` command would) so the issue in front waits: requests are
  // known to be in the page's hands by fastify's handler diagnostics channel, not by time.
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
});

describe('handshake-before-reload', () => {
  // A TLS connection to the account page whose handshake came before a reload took its certificate's CA out of
  // caFiles, and whose first request comes after it: the page took the verdict of that handshake, made with the
  // old CA list, for one made with the CA list of the first request (the current one), and signed the device in.
  // A client holding connections open across the reload (a device of a compromised CA being withdrawn) kept
  // signing in. Real TLS with the device certificate; the HTTP request written by hand on the open connection.
  let s: AccountsSetup;
  let scratch: string;
  let device: { certPem: string; keyPem: string };

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'postern-accounts-early-'));
    s = await startAccounts(scratch);
    device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'laptop' });
  });
  after(async () => {
    await s?.server.stop();
    await rm(scratch, { recursive: true, force: true });
  });

  /** The sign-in page asked for on `socket` (its first request), the body as read until the page closes it. */
  async function signInPage(socket: tls.TLSSocket): Promise<string> {
    let text = '';
    socket.on('data', (chunk: Buffer) => { text += chunk.toString(); });
    socket.write(`GET /signin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    await closed(socket);
    return text;
  }

  test('a handshake made before the CA was taken out of caFiles does not sign in by its first request after', async () => {
    const port = new URL(s.url).port;
    const early = tls.connect({ host: '127.0.0.1', port: Number(port), cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
    early.on('error', () => undefined);
    await new Promise<void>((resolve) => early.once('secureConnect', () => resolve()));

    const generation = s.server.runtime.generation;
    const file = join(s.server.dir, 'postern.yaml');
    const paths = pkiPaths(s.caDir);
    await writeFile(file, (await readFile(file, 'utf8')).replaceAll(paths.caCert, s.pki.otherCa.cert).replaceAll(paths.crl, s.pki.otherCa.crl));
    await until('the configuration without the CA is reloaded', () => s.server.runtime.generation !== generation, { timeoutMs: 60_000 });
    // The page has the new CA list once a new connection with the device certificate names no account.
    const agent = new https.Agent({ keepAlive: false, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
    try {
      await until('the page to take the new CA list', async () => !(await requestsOn(agent, s.url)('/signin')).body.includes(`presented a certificate for <b>${USERS.alice}</b>`), { timeoutMs: 60_000 });
    } finally {
      agent.destroy();
    }

    const page = await signInPage(early);
    assert.match(page, /^HTTP\/1\.1 200/);
    assert.doesNotMatch(page, /presented a certificate for <b>alice@example\.com<\/b>/, 'the old CA verified this handshake');
  });
});

describe('retire-after-session-ended', () => {
  // Revoking or removing a device on the account page takes a folder's lock (the CA folder to rewrite the CRL, the pin
  // table's folder to rewrite it), which `postern pki` / `postern pins` or another page request may hold: the request
  // waits up to 15 s for it. The session was checked when the request came in, not once the lock was taken: a thief
  // signed in with a leaked password whose revocation of the owner's phone waited for the lock still revoked it after
  // the administrator had reset the password (or the owner had revoked the thief's device as stolen, which ends the
  // thief's sessions, and whose own revocation is what held the lock). A change now runs only if its session still
  // stands once the lock is held.
  // The lock is held here as a `postern pki` command would hold it; the request is known to be in the page's hands by
  // fastify's handler diagnostics channel, not by time.
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
});

describe('revoked-before-reload', () => {
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
});

describe('revoked-intermediate', () => {
  // The account page and an intermediate CA revoked while it is in use: a session signed in with a certificate
  // that intermediate issued ends at its next request once the root's CRL listing it is reloaded, and the open
  // keep-alive connection whose handshake it verified no longer names an account. Only the leaf's serial was
  // checked, so the session (devices, issuing, revoking) went on for as long as the browser kept it.
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
});

describe('stolen-key-registered-elsewhere', () => {
  // A key removed on the page as lost or stolen is refused there at once (RevokedHere), until the page registers it
  // again: its owner found the laptop. But "registered again" was anyone's registration: the page forgot the stolen key
  // when another account pasted it (a public key or certificate is public: seen in a TLS handshake, or the thief's own
  // account on the same server). While the pin table in force still named the victim (reloads refused by a half-edited
  // users file, or before the reload's debounce), the stolen laptop then signed in to the page as the victim again.
  // Now only the account that lost the key forgets it by registering it again.
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
});

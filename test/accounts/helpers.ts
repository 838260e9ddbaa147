/**
 * The account page's test set-up: a production-style CA made by engine/pki, two users in the users file, a
 * submission listener that requires a client certificate (CA-verified by emailAddress, or pinned), and the
 * page on a free port. Plus headless Chromium (Debian's) driven by playwright-core.
 */
import assert from 'node:assert/strict';
import https from 'node:https';
import { writeFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { initCa } from '../../engine/pki/index.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import type { TestServer } from '../helpers/postern.ts';
import { needs, run } from '../helpers/example.ts';

export const CHROMIUM = '/usr/bin/chromium';
export const needsBrowser = (): { skip: string | false } => needs(CHROMIUM, 'curl', 'openssl');

export const USERS = { alice: 'alice@example.com', bob: 'bob@example.com' } as const;
export const PASSWORDS = { alice: 'correct horse battery', bob: 'tr0ub4dor&3' } as const;

export interface AccountsSetup {
  server: TestServer;
  pki: TestPki;
  caDir: string;
  pinsFile: string;
  /** https://127.0.0.1:<port> */
  url: string;
  smtpPort: number;
}

/** `page`: the page's own settings (its listen address, its per-address cap) over the defaults here. */
export async function startAccounts(scratchDir: string, limits: { authFailuresPerIp?: number; authFailuresPerAccount?: number } = {}, page: { listen?: string; maxConnectionsPerIp?: number; deviceAdditionsPerHour?: number } = {}, dataDir?: string): Promise<AccountsSetup> {
  // Never the working directory: the CA, its key and the users file would land in the checkout.
  if (!isAbsolute(scratchDir)) throw new Error(`startAccounts needs an absolute temporary folder, not "${scratchDir}"`);
  const pki = await makeTestPki();
  const caDir = join(scratchDir, 'ca');
  const ca = await initCa(caDir, { name: 'Accounts Test CA' });
  const pinsFile = join(scratchDir, 'device-pins');
  await writeFile(pinsFile, '# pins registered on the account page\n');
  const users = `${USERS.alice}:${await hashPassword(PASSWORDS.alice)}\n${USERS.bob}:${await hashPassword(PASSWORDS.bob)}\n`;
  await writeFile(join(scratchDir, 'users'), users);
  const config = configYaml({
    hostname: 'mail.example.com',
    localDomains: ['example.com'],
    users: join(scratchDir, 'users'),
    tables: { devicepins: pinsFile },
    pki: { dir: caDir },
    accounts: { listen: '127.0.0.1:0', listener: 'submission', ...page },
    listeners: [testListener('submission', {
      tls: { mode: 'starttls', cert: pki.server.cert, key: pki.server.key, clientCertificates: 'require', caFiles: [ca.paths.caCert], crlFiles: [ca.paths.crl] },
      certificateIdentity: { field: 'emailAddress', pins: 'devicepins' },
      auth: { mechanisms: ['EXTERNAL'], required: true },
      reverseDns: false,
      limits: { authFailureDelayMs: 0, ...limits },
    })],
  });
  // Loaded here, not at the top: the files that run `postern serve` or the CLI start no server in-process.
  const { startTestServer } = await import('../helpers/postern.ts');
  const server = await startTestServer({ config, settleMs: 20, dataDir });
  return {
    server, pki, caDir, pinsFile, url: `https://127.0.0.1:${server.accounts!.address.port}`, smtpPort: server.port('submission'),
  };
}

export async function launchChromium(): Promise<Browser> {
  // --no-sandbox: a container's root user has no user namespaces for Chromium's sandbox.
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
}

/** One sign-in attempt with curl: the form's CSRF token first, then the POST; the HTTP status. `from`: the client's address (127.x). */
export async function webSignIn(url: string, jar: string, user: string, password: string, from?: string): Promise<string> {
  const source = from ? ['--interface', from] : [];
  const form = await run('curl', ['-sS', '-k', ...source, '-c', jar, '-b', jar, `${url}/signin`]);
  const token = /name="_csrf" value="([^"]+)"/.exec(form.stdout)?.[1];
  assert.ok(token, form.output);
  const r = await run('curl', ['-sS', '-k', ...source, '-c', jar, '-b', jar, '-o', '/dev/null', '-w', '%{http_code}',
    '--data-urlencode', `_csrf=${token}`, '--data-urlencode', `user=${user}`, '--data-urlencode', `password=${password}`, `${url}/signin`]);
  return r.stdout;
}

/** Requests on `agent` (a keep-alive agent, one connection): status, location, body, cookies set, and the socket. */
export function requestsOn(agent: https.Agent, url: string) {
  return (path: string, opts: { method?: string; cookies?: string[]; body?: string } = {}): Promise<{ status: number; location?: string; body: string; cookies: string[]; socket: unknown }> =>
    new Promise((resolve, reject) => {
      const req = https.request(`${url}${path}`, {
        agent, method: opts.method ?? 'GET',
        headers: { ...(opts.cookies?.length ? { cookie: opts.cookies.join('; ') } : {}), ...(opts.body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) },
      }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => { body += d; }).on('end', () => resolve({
          status: res.statusCode!, location: res.headers.location, body, socket: res.socket,
          cookies: (res.headers['set-cookie'] ?? []).map((c) => c.split(';')[0]!),
        }));
      });
      req.on('error', reject);
      req.end(opts.body);
    });
}

/**
 * Signs in with the client certificate of `request`'s one keep-alive connection (requestsOn), as `identity`:
 * the session's cookies, and that connection (to check later answers came on it).
 */
export async function certificateSession(request: ReturnType<typeof requestsOn>, identity: string = USERS.alice): Promise<{ cookies: string[]; connection: unknown }> {
  const page = await request('/signin');
  assert.ok(page.body.includes(`presented a certificate for <b>${identity}</b>`), page.body);
  const csrf = /name="_csrf" value="([^"]+)"/.exec(page.body)![1]!;
  const signedIn = await request('/signin/certificate', { method: 'POST', cookies: page.cookies, body: `_csrf=${encodeURIComponent(csrf)}` });
  assert.equal(signedIn.location, '/devices');
  const cookies = [...page.cookies, ...signedIn.cookies];
  assert.equal((await request('/devices', { cookies })).status, 200);
  return { cookies, connection: signedIn.socket };
}

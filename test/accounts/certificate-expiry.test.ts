// The account page and a device certificate that ends while in use: a session signed in with it by a field
// (the server's CA, emailAddress) ends at its end, and the keep-alive connection whose handshake verified it
// no longer names an account, as a new handshake (CERT_HAS_EXPIRED) would not. Before, both went on: the
// session, kept alive by requests, could issue fresh two-year certificates from an expired one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certificateSession, requestsOn, startAccounts, USERS, type AccountsSetup } from './helpers.ts';
import { issueDevice } from '../../engine/pki/index.ts';
import { until } from '../helpers/wait.ts';

let s: AccountsSetup;
let scratch: string;
let agent: https.Agent;
let request: ReturnType<typeof requestsOn>;
let notAfter: Date;

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'postern-accounts-expiry-'));
  s = await startAccounts(scratch);
  // Whole seconds: X.509 times have no fractions.
  notAfter = new Date(Math.ceil((Date.now() + 6000) / 1000) * 1000);
  const device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'laptop', notAfter });
  agent = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
  request = requestsOn(agent, s.url);
});
after(async () => {
  agent?.destroy();
  await s?.server.stop();
  await rm(scratch, { recursive: true, force: true });
});

test('a certificate session ends at the certificate\'s end, and the open connection names no account past it', async () => {
  const { cookies, connection } = await certificateSession(request);

  // Polled on the one connection (its keep-alive never idles out); the deadline is a guard, not a measure.
  await until('the certificate session to end', async () => (await request('/devices', { cookies })).location === '/signin', { timeoutMs: 60_000 });
  assert.ok(Date.now() >= notAfter.getTime(), 'not before the certificate\'s end');
  const again = await request('/signin');
  assert.equal(again.socket, connection, 'still the connection whose handshake verified the certificate');
  assert.match(again.body, /names no account here \(expired\)/);
  assert.ok(s.server.logs.some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
});

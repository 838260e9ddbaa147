// A TLS connection to the account page whose handshake came before a reload took its certificate's CA out of
// caFiles, and whose first request comes after it: the page took the verdict of that handshake, made with the
// old CA list, for one made with the CA list of the first request (the current one), and signed the device in.
// A client holding connections open across the reload (a device of a compromised CA being withdrawn) kept
// signing in. Real TLS with the device certificate; the HTTP request written by hand on the open connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requestsOn, startAccounts, USERS, type AccountsSetup } from './helpers.ts';
import { issueDevice, pkiPaths } from '../../engine/pki/index.ts';
import { until, closed } from '../helpers/wait.ts';
import https from 'node:https';

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

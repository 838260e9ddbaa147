// The account page faces the users' networks: a client that never finishes its TLS handshake, or sends its
// request a byte at a time, is cut off (each within 10 s) while others are served; beyond 256 connections a
// new one is closed at once, so a crowd cannot take the file descriptors the SMTP listeners need, and beyond
// accounts.maxConnectionsPerIp (16) from one address too, before any handshake, so one client cannot be that
// crowd; a client certificate whose fields cannot be read counts as none (the page still serves the password
// sign-in).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import https from 'node:https';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closed, until } from '../helpers/wait.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';
import { startAccounts, type AccountsSetup } from './helpers.ts';

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

test('beyond 256 open connections a new one is closed at once; the page serves again once they are gone', { timeout: 120_000 }, async () => {
  // 16 addresses with 16 each: none over its own cap, the page full.
  const crowd = await Promise.all(Array.from({ length: 256 }, (_, i) => rawConnection(`127.0.1.${1 + (i % 16)}`)));
  let crowdClosed = 0;
  for (const c of crowd) c.once('close', () => crowdClosed++);
  const extra = await rawConnection('127.0.1.99');
  await closed(extra);
  assert.equal(crowdClosed, 0, 'the 257th was closed while all the others were still open (not by a timeout)');
  for (const c of crowd) c.destroy();
  await until('the page to serve again', async () => (await get('/signin').catch(() => 0)) === 200);
});

test('beyond 16 connections from one address a new one from it is closed before the TLS handshake; other addresses are served; a freed slot is its again', { timeout: 120_000 }, async () => {
  const crowd = await Promise.all(Array.from({ length: 16 }, () => rawConnection('127.0.2.1')));
  let crowdClosed = 0;
  for (const c of crowd) c.once('close', () => crowdClosed++);
  // The 17th starts a handshake: closed with no byte of TLS back (without the cap, it would get the page).
  const raw = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.2.1' });
  const extra = tls.connect({ socket: raw, ca, servername: 'localhost' });
  const outcome = await new Promise<string>((resolve) => {
    extra.once('secureConnect', () => { resolve('a handshake'); extra.destroy(); });
    for (const s of [raw, extra]) s.once('error', (err: NodeJS.ErrnoException) => resolve(`${err.code} ${err.message}`));
  });
  raw.destroy();
  assert.match(outcome, /ECONNRESET|socket disconnected|socket hang up/);
  assert.equal(crowdClosed, 0, 'closed at once, while the 16 of that address are still open (not by a timeout)');
  assert.equal(await get('/signin'), 200, 'another address is served meanwhile');
  assert.equal((await fetchPage('/signin', { localAddress: '127.0.2.2' })).status, 200);
  crowd.pop()!.destroy();
  await until('a slot for the address again', async () => (await fetchPage('/signin', { localAddress: '127.0.2.1' }).catch(() => ({ status: 0 }))).status === 200);
  for (const c of crowd) c.destroy();
  const warned = s.server.logs.filter((l) => l.msg === 'account page: too many connections from this address, new ones closed at once');
  assert.deepEqual(warned.map((l) => [l.client, l.limit]), [['127.0.2.1', 16]], 'one warning for the episode');
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

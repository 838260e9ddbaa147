// The account page faces the users' networks: a client that never finishes its TLS handshake, or sends its
// request a byte at a time, is cut off (each within 10 s) while others are served; at most 256 connections
// are open, so a crowd cannot take the file descriptors the SMTP listeners need, and at most
// accounts.maxConnectionsPerIp (16) from one address, so one client cannot be that crowd. Over either a new
// connection takes the place of the one that has asked nothing for longest: silent connections from 16
// addresses, opened again as the timeouts cut them, kept every user off the page. A client certificate whose fields cannot be read counts as none (the page still serves the password
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

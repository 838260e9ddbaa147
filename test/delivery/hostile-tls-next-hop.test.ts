// Outbound TLS against hostile or misconfigured next hops: what name is sent and checked, what a failed or
// stripped STARTTLS does to a message whose route requires TLS, and which certificate each connection presents.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, fakeResolver, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

let pki: TestPki;
let sink: Sink;
/** Ends the connection right after a handshake without a client certificate its CA issued (as Postern's requireVerifiedCertificate does). */
let strict: Sink;
let strictImplicit: Sink;
let s: DeliveryServer;
/** A next hop that does not offer STARTTLS and refuses it (what a stripping attacker leaves). */
let stripped: RawPeer;
/** Answers STARTTLS with 220 followed, in the same packet, by plaintext replies an attacker slipped in. */
let injecting: RawPeer;

/**
 * No script here runs long: a limit a loaded machine cannot outrun. At the default 100 ms, a predelivery call
 * (the first, on a fresh isolate) came back as a script failure under load: 'temporary', 451 4.3.0 Temporary policy
 * failure, where the test expected 'delivered'.
 */
const SCRIPTS_UNHURRIED = { timeoutMs: 10_000 };

before(async () => {
  pki = await makeTestPki();
  // Its certificate names localhost and 127.0.0.1; it asks for (and records) a client certificate.
  sink = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert });
  strict = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, requireClientCertificate: true });
  stripped = await startRawPeer({ offerStartTls: false });
  injecting = await startRawPeer({
    offerStartTls: true,
    injectAfter220: '250-injected\r\n250 8BITMIME\r\n250 2.1.0 injected\r\n250 2.1.5 injected\r\n354 injected\r\n250 2.0.0 injected-queued\r\n',
  });
  strictImplicit = await startSink({ tls: 'implicit', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, requireClientCertificate: true });
  const verify = { mode: 'verify', ca: 'test-ca' };
  const routes: Record<string, unknown> = {
    'sni-ip.example': { host: '127.0.0.1', port: sink.port, tls: { ...verify, serverName: '127.0.0.1' } },
    'sni-other-ip.example': { host: '127.0.0.1', port: sink.port, tls: { ...verify, serverName: '127.0.0.2' } },
    // One next hop, five identities: each connection must present the one its message's verdict chose.
    'as-alice.example': { tls: { mode: 'encrypt', clientCertificate: 'alice' } },
    'as-bob.example': { tls: { mode: 'encrypt', clientCertificate: 'bob' } },
    'anonymous.example': { tls: { mode: 'encrypt', clientCertificate: null } },
    'by-name.example': { tls: { ...verify, clientCertificate: 'alice', serverName: 'localhost' } },
    'bob-by-name.example': { tls: { ...verify, clientCertificate: 'bob', serverName: 'localhost' } },
    'expired.example': { port: strict.port, tls: { mode: 'encrypt', clientCertificate: 'expired' } },
    'stranger.example': { port: strict.port, tls: { mode: 'encrypt', clientCertificate: 'stranger' } },
    'stranger-implicit.example': { port: strictImplicit.port, implicitTls: true, tls: { mode: 'encrypt', clientCertificate: 'stranger' } },
    'stripped.example': { port: stripped.port, tls: { mode: 'encrypt', clientCertificate: 'alice' } },
    'injected.example': { port: injecting.port, tls: { mode: 'encrypt', clientCertificate: 'alice' } },
    'alice-implicit.example': { port: strictImplicit.port, implicitTls: true, tls: { mode: 'encrypt', clientCertificate: 'alice' } },
  };
  s = await startDeliveryServer({
    files: {
      'expired.crt': await readFile(pki.clients.expired.cert, 'utf8'), 'expired.key': await readFile(pki.clients.expired.key, 'utf8'),
      'stranger.crt': await readFile(pki.clients.stranger.cert, 'utf8'), 'stranger.key': await readFile(pki.clients.stranger.key, 'utf8'),
      'alice.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'alice.key': await readFile(pki.clients.alice.key, 'utf8'),
      'bob.crt': await readFile(pki.clients.bob.cert, 'utf8'), 'bob.key': await readFile(pki.clients.bob.key, 'utf8'),
    },
    config: configYaml({
      listeners: [testListener('in')],
      sandbox: SCRIPTS_UNHURRIED,
      delivery: {
        route: { smarthost: { host: '127.0.0.1', port: sink.port } }, retrySchedule: [3600], connectTimeoutMs: 10_000,
        caFiles: { 'test-ca': pki.ca.cert },
        clientCertificates: Object.fromEntries(['alice', 'bob', 'expired', 'stranger'].map((c) => [c, { cert: `./${c}.crt`, key: `./${c}.key` }])),
      },
    }),
    scripts: {
      'rcptto.ts': 'export default () => accept();',
      'predelivery.ts': `
const ROUTES: Record<string, PredeliveryVerdict> = ${JSON.stringify(routes)};
export default (ctx: PredeliveryContext) => ROUTES[ctx.destination.domain] ? deliver(ROUTES[ctx.destination.domain] as never) : undefined;
`,
    },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
  await strict?.close();
  await strictImplicit?.close();
  stripped?.close();
  injecting?.close();
});

/** Send to r@<domain>; the first attempt's outcome and what the next hop received for it. */
async function attempt(domain: string): Promise<{ status: string; reply: string; received: Sink['messages'][number] | undefined }> {
  const id = await s.send('sender@example.org', [`r@${domain}`]);
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  const received = [sink, strict, strictImplicit].flatMap((k) => k.messages).find((m) => m.to[0] === `r@${domain}`);
  return { status: e.outcomes[0]!.status, reply: e.outcomes[0]!.reply, received };
}

test('a serverName that is an IP address is checked against the certificate, and never sent as SNI', async () => {
  const r = await attempt('sni-ip.example');
  assert.equal(r.status, 'delivered', r.reply);
  assert.equal(r.received?.tls, true);
  assert.equal(r.received?.servername, null, 'RFC 6066 §3: no literal IP address in SNI');
  // The name checked is the one the script gave, not the address connected to (which the certificate does name).
  const other = await attempt('sni-other-ip.example');
  assert.equal(other.status, 'temporary', other.reply);
  assert.match(other.reply, /TLS failed: .*127\.0\.0\.2/);
  assert.equal(other.received, undefined);
});

test('a pooled connection is reused only for the identity it presents: certificate, none, and server name', async () => {
  // Five identities to one next hop, one more than perDestinationConcurrency (4) lets stay open: the fifth closes
  // one idle connection (the oldest identity's) to make room, and the others are then reused.
  const order = ['as-alice', 'as-bob', 'anonymous', 'by-name', 'bob-by-name', 'as-bob', 'anonymous', 'by-name', 'as-alice'];
  const got: Array<Sink['messages'][number]> = [];
  for (const d of order) {
    const r = await attempt(`${d}.example`);
    assert.equal(r.status, 'delivered', `${d}: ${r.reply}`);
    got.push(sink.messages.filter((m) => m.to[0] === `r@${d}.example`).at(-1)!);
  }
  const alice = pki.clients.alice.fingerprintSha256Colon;
  const bob = pki.clients.bob.fingerprintSha256Colon;
  assert.deepEqual(got.map((m) => m.clientFingerprint), [alice, bob, null, alice, bob, bob, null, alice, alice]);
  assert.deepEqual(got.map((m) => m.servername), [null, null, null, 'localhost', 'localhost', null, null, 'localhost', null]);
  // Each identity's later message went on its own earlier connection (so the fingerprints above were read off
  // pooled connections too); making room for the fifth closed one connection, not every idle one.
  const session = (i: number): string => got[i]!.sessionId;
  assert.deepEqual([session(5), session(6), session(7)], [session(1), session(2), session(3)], 'bob, anonymous and by-name reused');
  assert.notEqual(session(8), session(0), 'alice\'s idle connection made the room');
  assert.equal(new Set(got.map((m) => m.sessionId)).size, 6);
});

test('a next hop that drops the connection after the handshake (STARTTLS or implicit TLS): a TLS failure that names the certificate offered, and its expiry', async () => {
  // The next hop says nothing (no alert, no reply): which certificate it saw is only known here.
  const expired = await attempt('expired.example');
  assert.equal(expired.status, 'temporary', expired.reply);
  assert.match(expired.reply, /: TLS failed: .* \(client certificate "expired", which expired on 2021-01-01T00:00:00\.000Z\)$/);
  for (const domain of ['stranger.example', 'stranger-implicit.example']) {
    const r = await attempt(domain);
    assert.equal(r.status, 'temporary', r.reply);
    assert.match(r.reply, /: TLS failed: .* \(client certificate "stranger"\)$/, domain);
    assert.equal(r.received, undefined);
  }
  // A refused certificate is no dead destination: the next message, with a certificate it takes, goes through
  // at once (on implicit TLS the refusal was taken for an unreachable host, and the host suspended).
  const alice = await attempt('alice-implicit.example');
  assert.equal(alice.status, 'delivered', alice.reply);
  assert.equal(alice.received?.clientFingerprint, pki.clients.alice.fingerprintSha256Colon);
  assert.ok(!s.logs.some((l) => String(l.msg).includes('delivery temporarily suspended')), 'no destination suspended');
});

test('STARTTLS stripped where the route requires TLS: deferred, nothing of the message sent, no certificate offered', async () => {
  const r = await attempt('stripped.example');
  assert.equal(r.status, 'temporary', r.reply);
  assert.match(r.reply, /TLS failed: .*502 5\.5\.1/);
  assert.deepEqual(stripped.lines.filter((l) => !/^(EHLO|STARTTLS|QUIT)\b/i.test(l)), [], 'no MAIL FROM, RCPT TO or DATA in plaintext');
  assert.equal(stripped.handshakes, 0);
});

test('plaintext slipped in after the 220 to STARTTLS is discarded, not read as the replies of the TLS session', async () => {
  const r = await attempt('injected.example');
  assert.equal(r.status, 'delivered', r.reply);
  assert.match(r.reply, /^250 2\.0\.0 real-queued/, 'the verdict is the next hop\'s own, over TLS');
  assert.equal(injecting.handshakes, 1);
  assert.equal(injecting.messages, 1);
});

test('a smarthost written as an absolute name (trailing dot) is sent in SNI without the dot (RFC 6066 §3)', async () => {
  const dotted = await startDeliveryServer({
    resolver: fakeResolver({}, { 'localhost.': ['127.0.0.1'] }),
    config: configYaml({
      listeners: [testListener('in')],
      sandbox: SCRIPTS_UNHURRIED,
      delivery: { route: { smarthost: { host: 'localhost.', port: sink.port } }, tls: { mode: 'verify', ca: 'test-ca' }, caFiles: { 'test-ca': pki.ca.cert } },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const id = await dotted.send('sender@example.org', ['r@dotted.example']);
    const e = await dotted.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    assert.equal(sink.messages.find((m) => m.to[0] === 'r@dotted.example')?.servername, 'localhost');
  } finally {
    await dotted.stop();
  }
});

test('an implicit-TLS next hop that accepts connections and says nothing is still a dead destination (suspended)', async () => {
  // What tells it from a refused certificate: it never takes part in a handshake.
  const sockets = new Set<net.Socket>();
  const hole = net.createServer((c) => { sockets.add(c); c.on('error', () => undefined); });
  await new Promise<void>((resolve) => hole.listen(0, '127.0.0.1', () => resolve()));
  const port = (hole.address() as net.AddressInfo).port;
  const quiet = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      sandbox: SCRIPTS_UNHURRIED,
      // Nothing is expected to answer within it: a short connection timeout only makes the test quick.
      delivery: { route: { smarthost: { host: '127.0.0.1', port, implicitTls: true } }, tls: { mode: 'encrypt' }, connectTimeoutMs: 300, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const first = await quiet.send('sender@example.org', ['r@quiet.example']);
    const e1 = await quiet.nextAttempt((x) => x.id === first, { past: true });
    assert.equal(e1.outcomes[0]!.status, 'temporary');
    assert.doesNotMatch(e1.outcomes[0]!.reply, /TLS failed/);
    const second = await quiet.send('sender@example.org', ['r2@quiet.example']);
    const e2 = await quiet.nextAttempt((x) => x.id === second, { past: true });
    assert.match(e2.outcomes[0]!.reply, /delivery temporarily suspended/);
    assert.equal(sockets.size, 1, 'the second message did not wait out a connection of its own');
  } finally {
    await quiet.stop();
    hole.close();
    for (const c of sockets) c.destroy();
  }
});

test('a next hop that offers only TLS below 1.2: deferred as a TLS failure, implicit TLS too, nothing sent and no suspension', async () => {
  const context = tls.createSecureContext({
    cert: readFileSync(pki.server.cert), key: readFileSync(pki.server.key), minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0',
  });
  const received: string[] = [];
  const old = tls.createServer({ secureContext: context }, (c) => {
    c.on('error', () => undefined);
    c.on('data', (d) => received.push(d.toString()));
    c.write('220 old ESMTP\r\n');
  });
  old.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => old.listen(0, '127.0.0.1', () => resolve()));
  const port = (old.address() as net.AddressInfo).port;
  const downgraded = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      sandbox: SCRIPTS_UNHURRIED,
      delivery: { route: { smarthost: { host: '127.0.0.1', port, implicitTls: true } }, tls: { mode: 'encrypt' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    for (const rcpt of ['r1@old.example', 'r2@old.example']) {
      const id = await downgraded.send('sender@example.org', [rcpt]);
      const e = await downgraded.nextAttempt((x) => x.id === id, { past: true });
      assert.equal(e.outcomes[0]!.status, 'temporary');
      // OpenSSL's reason and alert, without its thread id, function and source file.
      assert.match(e.outcomes[0]!.reply, /: TLS failed: ssl\/tls alert [a-z ]+ \(SSL alert number \d+\)$/);
      assert.equal(e.outcomes[0]!.enhanced, '4.7.5');
    }
    assert.deepEqual(received, []);
    assert.ok(!downgraded.logs.some((l) => String(l.msg).includes('delivery temporarily suspended')), 'the next hop answered: no dead destination');
  } finally {
    await downgraded.stop();
    old.close();
  }
});

interface RawPeer { port: number; lines: string[]; handshakes: number; messages: number; close(): void }

/** A minimal SMTP next hop on a raw socket whose STARTTLS is in the test's hands (pki's server certificate). */
async function startRawPeer(opts: { offerStartTls: boolean; injectAfter220?: string }): Promise<RawPeer> {
  const context = tls.createSecureContext({ cert: readFileSync(pki.server.cert), key: readFileSync(pki.server.key) });
  const sockets = new Set<net.Socket>();
  const peer: RawPeer = { port: 0, lines: [], handshakes: 0, messages: 0, close: () => { server.close(); for (const k of sockets) k.destroy(); } };
  const server = net.createServer((plain) => {
    sockets.add(plain);
    plain.on('error', () => undefined);
    let sock: net.Socket = plain;
    let secure = false;
    let buf = '';
    let inData = false;
    const onData = (d: Buffer): void => {
      buf += d.toString('latin1');
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          buf = buf.slice(end + 5);
          inData = false;
          peer.messages++;
          sock.write('250 2.0.0 real-queued\r\n');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        peer.lines.push(line);
        if (/^EHLO/i.test(line)) sock.write(`250-peer\r\n${opts.offerStartTls && !secure ? '250-STARTTLS\r\n' : ''}250 8BITMIME\r\n`);
        else if (/^STARTTLS/i.test(line)) {
          if (!opts.offerStartTls || secure) { sock.write('502 5.5.1 STARTTLS not available\r\n'); continue; }
          plain.off('data', onData);
          plain.write(`220 2.0.0 Ready to start TLS\r\n${opts.injectAfter220 ?? ''}`);
          const t = new tls.TLSSocket(plain, { isServer: true, secureContext: context });
          t.on('error', () => undefined);
          t.once('secure', () => { peer.handshakes++; });
          t.on('data', onData);
          sock = t;
          secure = true;
          buf = '';
          return;
        } else if (/^MAIL/i.test(line)) sock.write('250 2.1.0 ok\r\n');
        else if (/^RCPT/i.test(line)) sock.write('250 2.1.5 ok\r\n');
        else if (/^DATA/i.test(line)) { sock.write('354 go on\r\n'); inData = true; }
        else if (/^QUIT/i.test(line)) { sock.end('221 2.0.0 bye\r\n'); return; }
        else sock.write('502 5.5.2 unknown command\r\n');
      }
    };
    plain.on('data', onData);
    plain.once('close', () => sockets.delete(plain));
    plain.write('220 peer ESMTP\r\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  peer.port = (server.address() as net.AddressInfo).port;
  return peer;
}

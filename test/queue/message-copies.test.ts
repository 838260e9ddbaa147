// A message went to nodemailer whole, as one Buffer: its data stream dot-stuffs a chunk into one new buffer (any line
// that starts with a dot, a bare CR or a bare LF makes it copy all of it) and the socket keeps it until the next hop
// has read it. A message to many destinations whose next hops take DATA and then read slowly was held once by the
// attempt, as delivery.maxBytesInMemory counts it, and once more by each transaction: 8 destinations, 9 copies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Spool } from '../../engine/spool/spool.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { dkimKeyPair } from '../helpers/dkim.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Buffers alive (collected first: what is held, not what is garbage yet). */
function liveBuffers(): number {
  gc();
  gc();
  return process.memoryUsage().arrayBuffers;
}

test('a message to many slow next hops is held once, not once more per transaction (dot-stuffed a piece at a time)', { timeout: 120_000 }, async () => {
  const DOMAINS = 8;
  // Lines that start with a dot: each is stuffed on the wire, so the data stream makes new bytes of all it is given.
  const big = Buffer.from(`Subject: dots\r\nFrom: s@origin.test\r\n\r\n${`.${'x'.repeat(997)}\r\n`.repeat(8000)}`);
  const dir = await mkdtemp(join(tmpdir(), 'postern-stuffed-'));
  const dataDir = join(dir, 'data');
  let reading = 0; // next hops that got the first bytes of the message (and then read no more)
  const peer = await startScriptedPeer({
    data: (sock) => {
      sock.write('354 go on\r\n');
      sock.removeAllListeners('data');
      sock.once('data', () => { reading++; sock.pause(); });
      return 'stop';
    },
  });
  let s: DeliveryServer | null = null;
  try {
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    const id = spool.newId();
    const writer = spool.create(id);
    writer.write(big);
    const now = new Date().toISOString();
    const domains = Array.from({ length: DOMAINS }, (_, i) => `d${i}.test`);
    await writer.commit({ version: 1, id, receivedAt: now, sender: 's@origin.test', recipients: domains.map((d) => ({ address: `r@${d}` })), size: 0,
      session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null },
      attempts: 0, nextAttemptAt: now, errors: [] });
    spool.close();
    const before = liveBuffers();
    s = await startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: DOMAINS },
      }),
      // A next hop of its own for each domain: a transaction each, all at once.
      resolver: fakeResolver(Object.fromEntries(domains.map((d) => [d, [{ exchange: `mx.${d}`, priority: 10 }]])), Object.fromEntries(domains.map((d) => [`mx.${d}`, ['127.0.0.1']]))),
    });
    await until('every next hop has the start of the message', () => reading >= DOMAINS, { timeoutMs: 60_000 });
    const grown = liveBuffers() - before;
    assert.ok(grown < 3 * big.length, `${(grown / 1e6).toFixed(1)} MB held for a ${(big.length / 1e6).toFixed(1)} MB message to ${DOMAINS} slow next hops`);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a DKIM-signed message is sent as its signature fields and then the message as read: no signed copy of it all', { timeout: 120_000 }, async () => {
  // The signature fields were put in front of the message with Buffer.concat: a second whole copy per attempt, held
  // for as long as the next hop took to read it, which delivery.maxBytesInMemory (counting the file once) missed.
  const big = Buffer.from(`Subject: large\r\nFrom: s@origin.test\r\n\r\n${`${'x'.repeat(998)}\r\n`.repeat(8000)}`);
  const dir = await mkdtemp(join(tmpdir(), 'postern-signed-pieces-'));
  const dataDir = join(dir, 'data');
  let reading = 0;
  let received = '';
  const peer = await startScriptedPeer({
    data: (sock) => {
      sock.write('354 go on\r\n');
      sock.removeAllListeners('data');
      sock.once('data', (d: Buffer) => { reading++; received = d.toString('latin1'); sock.pause(); });
      return 'stop';
    },
  });
  let s: DeliveryServer | null = null;
  try {
    const pair = dkimKeyPair('ed25519');
    await writeFile(join(dir, 'dkim.key'), pair.privateKey);
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    const id = spool.newId();
    const writer = spool.create(id);
    writer.write(big);
    const now = new Date().toISOString();
    await writer.commit({ version: 1, id, receivedAt: now, sender: 's@origin.test', recipients: [{ address: 'r@next.test' }], size: 0,
      session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null },
      attempts: 0, nextAttemptAt: now, errors: [] });
    spool.close();
    const before = liveBuffers();
    s = await startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600],
          dkim: { k: { domain: 'origin.test', selector: 's', privateKey: join(dir, 'dkim.key'), senderDomains: ['origin.test'] } } },
      }),
      resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
    });
    await until('the next hop has the start of the message', () => reading >= 1, { timeoutMs: 60_000 });
    assert.match(received, /^DKIM-Signature: /, 'signed');
    const grown = liveBuffers() - before;
    assert.ok(grown < 1.5 * big.length, `${(grown / 1e6).toFixed(1)} MB held for a ${(big.length / 1e6).toFixed(1)} MB signed message at a slow next hop`);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

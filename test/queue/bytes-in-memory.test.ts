// Each delivery attempt reads its whole message into memory, and up to twice `concurrency` attempts run or wait for
// a slot: large messages held by next hops that read slowly (or never answer) took about a copy each, a gigabyte
// with the defaults (40 × 25 MiB). delivery.maxBytesInMemory bounds what they hold together: here 5 MB lets two
// 2 MB messages in at a time, the other four wait, and all six are delivered once the next hop answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { dkimKeyPair } from '../helpers/dkim.ts';

const MESSAGES = 6;
const BODY = Buffer.from(`Subject: large\r\n\r\n${'x'.repeat(998)}\r\n`.repeat(2000)); // 2 MB: a file of its own

test('large messages waiting on a next hop hold at most delivery.maxBytesInMemory; the rest wait their turn and are delivered', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-bytes-in-memory-'));
  const dataDir = join(dir, 'data');
  // While `blocking`, the next hop does not answer EHLO: each attempt that got its message in memory waits there.
  let blocking = true;
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ ehlo: (s) => { if (!blocking) return; held.push(s); return 'stop'; } });
  let s: DeliveryServer | null = null;
  try {
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    const ids: string[] = [];
    for (let i = 0; i < MESSAGES; i++) {
      const id = spool.newId();
      const writer = spool.create(id);
      writer.write(BODY);
      const now = new Date().toISOString();
      await writer.commit({ version: 1, id, receivedAt: now, sender: 's@origin.test', recipients: [{ address: `r${i}@next.test` }], size: 0,
        session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null },
        attempts: 0, nextAttemptAt: now, errors: [] });
      ids.push(id);
      assert.ok(await spool.fileBytes(id) > BODY.length, 'stored in a file of its own');
    }
    spool.close();

    s = await startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600],
          concurrency: 10, perDestinationConcurrency: 10, maxBytesInMemory: 5_000_000 },
      }),
      resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
    });
    const waits = (): number => s!.logs.filter((l) => /waits until its \d+ bytes fit in delivery\.maxBytesInMemory/.test(String(l.msg))).length;
    await until('every attempt started: in memory at the next hop, or waiting', () => held.length + waits() >= MESSAGES, { timeoutMs: 60_000 });
    assert.equal(held.length, 2, 'two 2 MB messages fit in 5 MB');
    assert.equal(waits(), MESSAGES - 2);

    blocking = false;
    for (const socket of held) socket.write('250-peer\r\n250 8BITMIME\r\n');
    for (const id of ids) assert.equal((await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).removed, true);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a DKIM-signed message to many destinations is signed once per attempt: its transactions share one signed copy', { timeout: 120_000 }, async () => {
  // Each transaction signed the message itself, a whole copy (the signature in front), held while it waited for a
  // slot: a 4 MB list post to 20 domains held 20 copies, 80 MB that delivery.maxBytesInMemory, counting it once, missed.
  const DOMAINS = 20;
  const big = Buffer.from(`Subject: large\r\nFrom: s@origin.test\r\n\r\n${'x'.repeat(998)}\r\n`.repeat(4000));
  const dir = await mkdtemp(join(tmpdir(), 'postern-signed-once-'));
  const dataDir = join(dir, 'data');
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ ehlo: (sock) => { held.push(sock); return 'stop'; } });
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
    const domains = Array.from({ length: DOMAINS }, (_, i) => `d${i}.test`);
    await writer.commit({ version: 1, id, receivedAt: now, sender: 's@origin.test', recipients: domains.map((d) => ({ address: `r@${d}` })), size: 0,
      session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null },
      attempts: 0, nextAttemptAt: now, errors: [] });
    spool.close();
    const before = process.memoryUsage().arrayBuffers;
    s = await startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 1,
          dkim: { k: { domain: 'origin.test', selector: 's', privateKey: join(dir, 'dkim.key'), senderDomains: ['origin.test'] } } },
      }),
      // A next hop of its own for each domain: a transaction each, all but one waiting for the only slot.
      resolver: fakeResolver(Object.fromEntries(domains.map((d) => [d, [{ exchange: `mx.${d}`, priority: 10 }]])), Object.fromEntries(domains.map((d) => [`mx.${d}`, ['127.0.0.1']]))),
    });
    await until('the first transaction at the next hop', () => held.length >= 1, { timeoutMs: 60_000 });
    const grown = process.memoryUsage().arrayBuffers - before;
    assert.ok(grown < 6 * big.length, `${(grown / 1e6).toFixed(1)} MB held for a ${(big.length / 1e6).toFixed(1)} MB message to ${DOMAINS} destinations`);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

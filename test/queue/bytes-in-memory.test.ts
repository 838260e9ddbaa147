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
import { holdMessages } from '../../engine/queue/admin.ts';

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

/**
 * Two 2 MB messages in a spool under `dataDir`, a server delivering them to `port` with `maxBytesInMemory` 3 MB: the
 * first one's attempt gets it in memory, the second one's waits for it.
 */
async function twoLargeMessages(dataDir: string, port: number, maxBytesInMemory = 3_000_000): Promise<{ s: DeliveryServer; ids: string[]; config: (max: number, enabled?: boolean) => string }> {
  const spool = new Spool(join(dataDir, 'spool'));
  await spool.init();
  const ids: string[] = [];
  for (let i = 0; i < 2; i++) {
    const id = spool.newId();
    const writer = spool.create(id);
    writer.write(BODY);
    const now = new Date().toISOString();
    await writer.commit({ version: 1, id, receivedAt: now, sender: 's@origin.test', recipients: [{ address: `r${i}@next.test` }], size: 0,
      session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null },
      attempts: 0, nextAttemptAt: now, errors: [] });
    ids.push(id);
  }
  spool.close();
  const config = (max: number, enabled = true): string => configYaml({
    listeners: [testListener('in')],
    delivery: { enabled, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600],
      concurrency: 10, perDestinationConcurrency: 10, maxBytesInMemory: max, scanIntervalMs: 200 },
  });
  const s = await startDeliveryServer({
    dataDir, config: config(maxBytesInMemory),
    resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
  });
  return { s, ids, config };
}

const waitsForMemory = (s: DeliveryServer, id: string): boolean =>
  s.logs.some((l) => String(l.msg).startsWith(`${id}: waits until its `));

test('a message put on hold while its attempt waits for room in delivery.maxBytesInMemory is not delivered once there is room', { timeout: 120_000 }, async () => {
  // The attempt looked for a hold before its wait, which lasts as long as the large messages ahead of it take at their
  // next hops (a tarpit: half an hour each): `postern queue hold` meanwhile, and it was delivered all the same.
  const dir = await mkdtemp(join(tmpdir(), 'postern-bytes-hold-'));
  let blocking = true;
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ ehlo: (sock) => { if (!blocking) return; held.push(sock); return 'stop'; } });
  let s: DeliveryServer | null = null;
  try {
    let ids: string[];
    ({ s, ids } = await twoLargeMessages(join(dir, 'data'), peer.port));
    const [first, second] = ids as [string, string];
    const server = s;
    await until('one message at the next hop, the other waiting for memory', () => held.length === 1 && ids.some((id) => waitsForMemory(server, id)), { timeoutMs: 60_000 });
    const waiting = waitsForMemory(server, first) ? first : second; // (either may be taken first)
    const going = waiting === first ? second : first;
    assert.deepEqual((await holdMessages(s.spools, [waiting], { at: new Date().toISOString(), by: null })).changed, [waiting]);
    await s.scans(2, 60_000);

    blocking = false;
    held[0]!.write('250-peer\r\n250 8BITMIME\r\n');
    assert.equal((await s.nextAttempt((e) => e.id === going, { timeoutMs: 60_000, past: true })).removed, true);
    await until('the held message\'s attempt has ended', () => s!.queue!.activeCount === 0, { timeoutMs: 60_000 });
    assert.deepEqual(s.attempts.filter((e) => e.id === waiting), [], 'no attempt of the held message');
    assert.equal(await s.spools.isHeld(waiting), true);
    assert.ok(s.logs.some((l) => String(l.msg).startsWith(`${waiting}: on hold, not attempted`)));
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('delivery.maxBytesInMemory raised by a reload lets in the attempts waiting for room at once', { timeout: 120_000 }, async () => {
  // The budget was read at each request and when memory was given back: an attempt waiting behind a message held at a
  // slow next hop waited for that one after the administrator raised the limit (half an hour for a tarpit).
  const dir = await mkdtemp(join(tmpdir(), 'postern-bytes-reload-'));
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ ehlo: (sock) => { held.push(sock); return 'stop'; } });
  let s: DeliveryServer | null = null;
  try {
    let ids: string[];
    let config: (max: number, enabled?: boolean) => string;
    ({ s, ids, config } = await twoLargeMessages(join(dir, 'data'), peer.port));
    const server = s;
    await until('one message at the next hop, the other waiting for memory', () => held.length === 1 && ids.some((id) => waitsForMemory(server, id)), { timeoutMs: 60_000 });

    await writeFile(join(s.dir, 'postern.yaml'), config(10_000_000));
    assert.equal((await s.reloader.reload('test')).ok, true);
    await until('the waiting message at the next hop too, the first one still held there', () => held.length === 2, { timeoutMs: 60_000 });
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('an attempt waiting for room in delivery.maxBytesInMemory when a reload turns delivery off is not made', { timeout: 120_000 }, async () => {
  // After its wait the attempt took the generation then in force, delivery.enabled: false included, and delivered the
  // message all the same (with the route of the new configuration: an administrator stopping delivery in an incident).
  const dir = await mkdtemp(join(tmpdir(), 'postern-bytes-disabled-'));
  let blocking = true;
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ ehlo: (sock) => { if (!blocking) return; held.push(sock); return 'stop'; } });
  let s: DeliveryServer | null = null;
  try {
    let ids: string[];
    let config: (max: number, enabled?: boolean) => string;
    ({ s, ids, config } = await twoLargeMessages(join(dir, 'data'), peer.port));
    const server = s;
    await until('one message at the next hop, the other waiting for memory', () => held.length === 1 && ids.some((id) => waitsForMemory(server, id)), { timeoutMs: 60_000 });
    const waiting = ids.find((id) => waitsForMemory(server, id))!;
    const going = ids.find((id) => id !== waiting)!;

    await writeFile(join(s.dir, 'postern.yaml'), config(3_000_000, false));
    assert.equal((await s.reloader.reload('test')).ok, true);
    blocking = false;
    held[0]!.write('250-peer\r\n250 8BITMIME\r\n'); // the attempt under way goes on (begun before)
    assert.equal((await s.nextAttempt((e) => e.id === going, { timeoutMs: 60_000, past: true })).removed, true);
    await until('no attempt under way', () => server.queue!.activeCount === 0, { timeoutMs: 60_000 });
    assert.deepEqual(s.attempts.filter((e) => e.id === waiting), [], 'not attempted while delivery is off');
    assert.equal(await s.spools.has(waiting), true);

    await writeFile(join(s.dir, 'postern.yaml'), config(3_000_000, true));
    assert.equal((await s.reloader.reload('test')).ok, true);
    assert.equal((await s.nextAttempt((e) => e.id === waiting, { timeoutMs: 60_000, past: true })).removed, true, 'delivered once delivery is on again');
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

// Lines longer than delivery.lineLengthLimit are broken in a copy of the message, and a DKIM-signed message's bare line
// ends made CRLF in another, held beside it for the whole attempt: two 2 MB messages of long lines held 8 MB where 5 MB
// was allowed, and a sender of such messages made every attempt hold twice what was counted (three times, signed).
// Now the copies are counted: one attempt at a time, the other waits (holding nothing: its message is read again once
// there is room for it and its copy), and both are delivered.
test('a large message rewritten for the wire (lines over lineLengthLimit) counts its copy in delivery.maxBytesInMemory', { timeout: 120_000 }, async () => {
  await rewrittenMessages(Buffer.from(`Subject: long lines\r\n\r\n${`${'y'.repeat(2998)}\r\n`.repeat(700)}`), false); // 2.1 MB, lines of 3000 octets
});

test('a large message with bare LF line ends, DKIM keys declared, counts its CRLF copy in delivery.maxBytesInMemory', { timeout: 120_000 }, async () => {
  await rewrittenMessages(Buffer.from(`Subject: bare LFs\nFrom: s@origin.test\n\n${`${'y'.repeat(98)}\n`.repeat(21_000)}`), true); // 2.1 MB
});

async function rewrittenMessages(long: Buffer, dkim: boolean): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-bytes-rewritten-'));
  const dataDir = join(dir, 'data');
  let blocking = true;
  const held: net.Socket[] = [];
  const bodies: string[] = [];
  const peer = await startScriptedPeer({
    ehlo: (sock) => { if (!blocking) return; held.push(sock); return 'stop'; },
    endOfData: (_sock, message) => { bodies.push(message); },
  });
  let s: DeliveryServer | null = null;
  try {
    const pair = dkimKeyPair('ed25519');
    await writeFile(join(dir, 'dkim.key'), pair.privateKey);
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const id = spool.newId();
      const writer = spool.create(id);
      writer.write(long);
      const now = new Date().toISOString();
      await writer.commit({ version: 1, id, receivedAt: now, sender: 's@origin.test', recipients: [{ address: `r${i}@next.test` }], size: 0,
        session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null },
        attempts: 0, nextAttemptAt: now, errors: [] });
      ids.push(id);
    }
    spool.close();
    s = await startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600],
          concurrency: 10, perDestinationConcurrency: 10, maxBytesInMemory: 5_000_000,
          ...(dkim ? { dkim: { k: { domain: 'origin.test', selector: 's', privateKey: join(dir, 'dkim.key'), senderDomains: ['origin.test'] } } } : {}) },
      }),
      resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
    });
    const server = s;
    await until('both attempts under way: at the next hop, or waiting for memory', () => held.length + ids.filter((id) => waitsForMemory(server, id)).length >= 2, { timeoutMs: 60_000 });
    await s.scans(2, 60_000);
    assert.equal(held.length, 1, 'a 2.1 MB message and its rewritten copy: one attempt fits in 5 MB');
    blocking = false;
    held[0]!.write('250-peer\r\n250 8BITMIME\r\n');
    for (const id of ids) assert.equal((await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).removed, true);
    assert.equal(bodies.length, 2);
    for (const body of bodies) assert.ok(body.split('\r\n').every((line) => line.length <= 998 && !line.includes('\n')), 'lines within the limit, CRLF, on the wire');
    if (dkim) for (const body of bodies) assert.match(body, /^DKIM-Signature: /);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
}

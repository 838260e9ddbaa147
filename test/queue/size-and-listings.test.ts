// The queue's size and listings in one server process: bytes held in memory, operations on a long queue, a retry
// backlog, a notice over the next hop's size, DSN parsers, one attempt at a time, a retry requested during an attempt,
// and listings on a terminal. One file for what were several (one test process and one load of the engine instead of
// one each), each its own describe with its own servers, as before.
import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { readdirSync } from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Spool } from '../../engine/spool/spool.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener, smarthostDelivery, testServerTls } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { dkimKeyPair } from '../helpers/dkim.ts';
import { holdMessages, deleteMessage, releaseMessages, retryMessages } from '../../engine/queue/admin.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';
import { SmtpTestClient, sendWithParams, submitMessage } from '../helpers/smtp-client.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { buildDsn, type DsnInput } from '../../engine/queue/dsn.ts';
import { runCli } from '../helpers/cli.ts';
import { diskFaults, isStopped } from '../helpers/disk-faults.ts';
import { startTestServer } from '../helpers/postern.ts';
import { needs } from '../helpers/example.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';

describe('bytes-in-memory', () => {
  // Each delivery attempt reads its whole message into memory, and up to twice `concurrency` attempts run or wait for
  // a slot: large messages held by next hops that read slowly (or never answer) took about a copy each, a gigabyte
  // with the defaults (40 × 25 MiB). delivery.maxBytesInMemory bounds what they hold together: here 5 MB lets two
  // 2 MB messages in at a time, the other four wait, and all six are delivered once the next hop answers.
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
          // Logged in when signed: the sender domain's keys sign only what a logged-in client sent.
          session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: dkim ? 's@origin.test' : null, clientCertificate: null },
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
});

describe('operations-on-a-long-queue', () => {
  // `postern queue hold` and `delete` on a long queue while the server runs: each asked the runner for a rescan,
  // which rereads the state file of every message in the queue (30,000 deferred messages: 1.5 s of the queue
  // process's CPU and its event loop held 300 ms, for each command; an operator deleting messages one command at
  // a time made it do that for every one). The runner's ordinary scan already sees both: a held message is
  // listed as held, a deleted one is no longer listed. Counted here: the state files the runner reads.
  const MESSAGES = 2000;

  test('hold and delete on a 2,000-message queue: the running server does not reread every state; release still delivers', { timeout: 180_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-queue-ops-'));
    const sink = await startSink();
    try {
      const spool = new Spool(join(dir, 'data', 'spool'));
      await spool.init();
      // Deferred for an hour; the last one, for a next hop that takes it, held.
      const ids = await spoolMessages(spool, Array.from({ length: MESSAGES }, (_, i) => `r${i}@later.test`), { deferredUntil: new Date(Date.now() + 3600_000) });
      ids.push(...await spoolMessages(spool, ['z@live.test']));
      const released = ids[MESSAGES]!;
      await spool.hold(released, { at: new Date().toISOString(), by: null });
      spool.close();

      const s = await startDeliveryServer({
        dataDir: join(dir, 'data'),
        config: configYaml({
          listeners: [testListener('in')],
          delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], scanIntervalMs: 200 },
        }),
        scripts: { 'rcptto.ts': 'export default () => accept();' },
        resolver: fakeResolver({ 'live.test': [{ exchange: 'mx.live.test', priority: 10 }] }, { 'mx.live.test': ['127.0.0.1'] }),
      });
      try {
        await s.scans(1, 120_000);
        assert.equal(s.queue!.queuedCount, MESSAGES, 'every deferred message scheduled, the held one not');
        let reads = 0;
        const readState = s.spools.readState.bind(s.spools);
        s.spools.readState = (id: string) => { reads++; return readState(id); };

        const held = await holdMessages(s.spools, [ids[10]!], { at: new Date().toISOString(), by: null });
        assert.deepEqual(held.changed, [ids[10]]);
        assert.equal(await deleteMessage(s.spools, ids[20]!), true);
        await s.scans(2, 120_000);
        assert.equal(s.queue!.queuedCount, MESSAGES - 2, 'the held one and the deleted one are no longer scheduled');
        assert.ok(reads < 10, `${reads} state files read after a hold and a delete, in a queue of ${MESSAGES}`);

        // Release still makes the message due at once.
        await releaseMessages(s.spools, [released]);
        await until('the released message delivered', () => sink.messages.length === 1, { timeoutMs: 60_000 });
        assert.deepEqual(sink.messages[0]!.to, ['z@live.test']);
      } finally {
        await s.stop();
      }
    } finally {
      await sink.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('retry-backlog', () => {
  // A backlog of retries all due at once, for a destination still down (here after `postern queue retry --all`,
  // as an operator does once an outage seems over; a restart after downtime does the same): the queue took them
  // earliest first, so mail that came in meanwhile, due later, waited until every one of them had been tried
  // and deferred again (a read and a synced state file each). New mail and retries now take turns (Postfix's
  // incoming and deferred queues): counted here, the retries attempted between the new message's arrival and
  // its delivery was begun (the live next hop's EHLO: retries deferred while the new message is being sent are
  // not ahead of it).
  const BACKLOG = 600;

  test('new mail is not queued behind a backlog of retries due at once for a dead destination', { timeout: 240_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-retry-backlog-'));
    // The live next hop notes how many attempts had ended when the new message's delivery reached it.
    const seen = { attemptsAtEhlo: -1 };
    let attempts: () => number = () => -1;
    const sink = await startScriptedPeer({ ehlo: () => { seen.attemptsAtEhlo = attempts(); } });
    try {
      const spool = new Spool(join(dir, 'data', 'spool'));
      await spool.init();
      const ids = await spoolMessages(spool, Array.from({ length: BACKLOG }, (_, i) => `r${i}@dead.test`), { deferredUntil: new Date(Date.now() + 3600_000) });
      spool.close();

      // Nothing listens on 127.0.0.8: dead.test's mail is refused at once, then deferred as suspended.
      const s = await startDeliveryServer({
        dataDir: join(dir, 'data'),
        config: configYaml({
          listeners: [testListener('in')],
          delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 1 },
        }),
        scripts: { 'rcptto.ts': 'export default () => accept();' },
        resolver: fakeResolver({
          'dead.test': [{ exchange: 'mx.dead.test', priority: 10 }],
          'live.test': [{ exchange: 'mx.live.test', priority: 10 }],
        }, { 'mx.dead.test': ['127.0.0.8'], 'mx.live.test': ['127.0.0.1'] }),
      });
      attempts = () => s.attempts.length;
      try {
        await s.scans(1, 120_000);
        await retryMessages(s.spools, 'all');
        await s.scans(1, 120_000); // every retry read again and due now
        // Counted from the new message's 250 (it is due from then on) to its delivery's EHLO at the next hop: the
        // retries tried while the client was still sending it, or while it was being sent, are not ahead of it.
        const live = await s.send('a@origin.test', ['z@live.test']);
        const before = s.attempts.length;
        const e = await s.nextAttempt((x) => x.id === live, { timeoutMs: 180_000, past: true });
        assert.equal(e.removed, true);
        assert.ok(seen.attemptsAtEhlo >= before, 'the next hop saw the delivery begin');
        const retried = s.attempts.slice(before, seen.attemptsAtEhlo).filter((x) => ids.includes(x.id)).length;
        const left = BACKLOG - s.attempts.slice(0, before).filter((x) => ids.includes(x.id)).length;
        assert.ok(left > 50, `the backlog was still there when the new message came (${left} left): the test shows nothing otherwise`);
        assert.ok(retried <= 10, `${retried} retries of the dead destination attempted before the new message (${left} were waiting)`);
      } finally {
        await s.stop();
      }
    } finally {
      sink.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('dsn-over-next-hop-size', () => {
  // A bounce bigger than the next hop takes. A message just within a next hop's SIZE (1 MiB here) with RET=FULL is
  // refused for its recipient; its bounce returns it whole, and is those few KB more than the message: the same next
  // hop refused the bounce for its size, and as a bounce (null sender) it was discarded — the sender never heard of the
  // failure. It is sent again with the message's header only, which the next hop takes and Python reads.
  const run = promisify(execFile);
  const scratch = useScratchDir('postern-dsn-size-');

  const READ = `
import sys, json, email
from email import policy
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=policy.default)
parts = m.get_payload()
print(json.dumps({
    'parts': [p.get_content_type() for p in parts], 'text': parts[0].get_content(),
    'defects': [f'{p.get_content_type()}: {d!r}' for p in m.walk() for d in p.defects],
    'blocks': [dict(b.items()) for p in m.walk() if p.get_content_type() == 'message/delivery-status' for b in p.get_payload()],
    'returned': parts[2].get_content() if len(parts) > 2 else '',
}))
`;

  test('a RET=FULL bounce that the next hop refuses for its size is sent again with the header only, not discarded', { timeout: 120_000 }, async () => {
    const SIZE = 1024 * 1024;
    const sink = await startSink({ size: SIZE, decide: (stage, address) => (stage === 'rcpt' && address.startsWith('gone') ? { code: 550, text: '5.1.1 <gone@dest.test>: User unknown' } : null) });
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }) }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const c = await SmtpTestClient.connect(s.port());
      await c.hello();
      const body = `${'x'.repeat(98)}\r\n`.repeat(10_470); // 1,047,000 bytes: the message is within SIZE, its whole return is not
      const id = await sendWithParams(c, '<me@example.test> RET=FULL', ['<gone@dest.test>'], `From: me@example.test\r\nSubject: big\r\n\r\n${body}`);
      await c.quit();
      const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
      assert.ok(e.bounceId);
      const first = await s.nextAttempt((x) => x.id === e.bounceId && x.removed, { timeoutMs: 30_000, past: true });
      assert.deepEqual(first.outcomes.map((o) => [o.status, o.enhanced]), [['permanent', '5.3.4']], 'the whole return is over the next hop\'s SIZE');
      assert.ok(first.bounceId, 'the refused notice is spooled again, not discarded');
      const second = await s.nextAttempt((x) => x.id === first.bounceId && x.removed, { timeoutMs: 30_000, past: true });
      assert.deepEqual(second.outcomes.map((o) => [o.recipient, o.status]), [['me@example.test', 'delivered']]);
      const bounces = sink.messages.filter((m) => m.from === '');
      assert.equal(bounces.length, 1);
      assert.ok(bounces[0]!.data.length < 64 * 1024, `${bounces[0]!.data.length} bytes`);
      const read = JSON.parse((await run('python3', ['-c', READ, await scratch.file('bounce.eml', bounces[0]!.data)])).stdout) as {
        parts: string[]; text: string; defects: string[]; blocks: Array<Record<string, string>>; returned: string;
      };
      assert.deepEqual(read.defects, []);
      assert.deepEqual(read.parts, ['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
      assert.match(read.text, /the header of your message is attached/);
      assert.match(read.text, /refused for its size, so only its header is returned/);
      assert.doesNotMatch(read.text, /follows; your message is attached/);
      assert.equal(read.blocks[1]!['Final-Recipient'], 'rfc822; gone@dest.test');
      assert.match(read.returned, /^Subject: big$/m);
      assert.doesNotMatch(read.returned, /xxxx/, 'the header only');
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('dsn-parsers', () => {
  // Bounces as others read them: Python's email package (a real MIME parser, the one bounce processors such as
  // flufl.bounce build on) parses what buildDsn writes for hostile inputs — a next hop's reply in another script,
  // a long hostname, a sender at an IDN domain — and finds a multipart/report of three parts, one delivery-status
  // block per recipient, no defects, 7-bit lines within 998 characters and a boundary within RFC 2046's 70. And a
  // bounce storm: a message to 500 recipients that all fail makes one report, not one a recipient or a transaction.
  // And the bounce to a sender at an IDN domain reaches a next hop without 8BITMIME (its To: was raw UTF-8: refused
  // there, 5.6.3, and discarded as the null sender's).
  const run = promisify(execFile);
  const scratch = useScratchDir('postern-dsn-parsers-');

  const READ = `
import sys, json, email
from email import policy
raw = open(sys.argv[1], 'rb').read()
m = email.message_from_bytes(raw, policy=policy.default)
defects = [f'{p.get_content_type()}: {d!r}' for p in m.walk() for d in p.defects]
to = m['To']
defects += [f'To: {d!r}' for d in to.defects]
blocks = []
for p in m.walk():
    if p.get_content_type() == 'message/delivery-status':
        blocks = [dict(b.items()) for b in p.get_payload()]
lines = raw.split(b'\\r\\n')
print(json.dumps({
    'type': m.get_content_type(), 'reportType': m.get_param('report-type'), 'boundary': m.get_boundary(),
    'parts': [p.get_content_type() for p in m.get_payload()], 'blocks': blocks, 'defects': defects,
    'to': [a.addr_spec for a in to.addresses], 'eightBit': any(b > 127 for b in raw), 'longest': max(len(l) for l in lines),
}))
`;

  interface Read { type: string; reportType: string; boundary: string; parts: string[]; blocks: Array<Record<string, string>>; defects: string[]; to: string[]; eightBit: boolean; longest: number }

  async function pythonReads(raw: Buffer): Promise<Read> {
    const file = await scratch.file(`dsn-${Math.random().toString(36).slice(2)}.eml`, raw);
    const { stdout } = await run('python3', ['-c', READ, file]);
    return JSON.parse(stdout) as Read;
  }

  const original = (sender: string): DsnInput['original'] => ({ id: '0mabcdefg1a2b3c4d5e', sender, receivedAt: '2026-01-01T00:00:00Z' });

  test('a next hop\'s reply in another script, a long hostname, a sender at an IDN domain: Python reads a well-formed, 7-bit report', async () => {
    // A localized refusal (a next hop may answer in UTF-8), long enough to be clipped: each character is 8 when escaped.
    const localized = `550 5.1.1 ${'\u65e5\u672c\u8a9e\u306e\u30a8\u30e9\u30fc'.repeat(150)}`;
    const raw = buildDsn({
      hostname: 'reporting-host-with-a-long-name.mail.internal.example.org',
      original: original('info@m\u00fcnchen.example'),
      originalMessage: Buffer.from('From: info@xn--mnchen-3ya.example\r\nSubject: hi\r\n\r\nbody\r\n'),
      failed: [
        { recipient: 'a@x.test', status: '5.1.1', diagnostic: localized, remoteReply: true, remoteMta: 'mx.x.test[192.0.2.1]:25' },
        // Boundary- and header-looking text from a next hop: one line, inside its field.
        { recipient: 'b@x.test', status: '5.7.1', diagnostic: '550 5.7.1 --0mabcdefg1a2b3c4d5e Content-Type: text/html', remoteReply: true, remoteMta: 'mx.x.test[192.0.2.1]:25',
          // An ORCPT a client may give (500 characters): 4,000 as \x{65E5} escapes, with no place to fold.
          orcpt: `rfc822;${'\u65e5'.repeat(480)}@x.example` },
      ],
      expired: false,
    });
    const read = await pythonReads(raw);
    assert.deepEqual(read.defects, []);
    assert.equal(read.type, 'multipart/report');
    assert.equal(read.reportType, 'delivery-status');
    assert.deepEqual(read.parts, ['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
    assert.ok(read.boundary.length <= 70, `boundary of ${read.boundary.length} characters (RFC 2046: 70 at most; Dovecot keeps 80)`);
    assert.equal(read.eightBit, false, 'the bounce is 7-bit: a next hop without 8BITMIME takes it');
    assert.ok(read.longest <= 998, `a line of ${read.longest} characters`);
    assert.deepEqual(read.to, ['info@xn--mnchen-3ya.example']);
    assert.deepEqual(read.blocks.slice(1).map((b) => [b['Final-Recipient'], b.Action, b.Status]), [['rfc822; a@x.test', 'failed', '5.1.1'], ['rfc822; b@x.test', 'failed', '5.7.1']]);
    const diagnostic = read.blocks[1]!['Diagnostic-Code']!;
    assert.match(diagnostic, /^smtp; 550 5\.1\.1 (\\x\{[0-9A-F]+\})+\.\.\.$/, 'clipped between escapes, not inside one');
    assert.equal(read.blocks[2]!['Diagnostic-Code'], 'smtp; 550 5.7.1 --0mabcdefg1a2b3c4d5e Content-Type: text/html');
    assert.equal(read.blocks[2]!['Original-Recipient'], undefined, 'an ORCPT too long for one line is left out (it is optional)');
  });

  test('a bounce storm: one message to 500 recipients the next hop refuses (100 a transaction) gets one report of 500, which Python reads', { timeout: 120_000 }, async () => {
    const sink = await startSink({
      maxRecipients: 100,
      decide: (stage, address) => (stage === 'rcpt' && address.startsWith('gone') ? { code: 550, text: `5.1.1 <${address}>: Recipient address rejected: User unknown` } : null),
    });
    const s = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test', listeners: [testListener('in', { limits: { maxRecipients: 500 } })], localDomains: ['example.test'],
        delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }),
        // Not the 100 ms default: on a loaded machine one of the 500 rcptto calls outran it, its RCPT got 451 4.3.0
        // (failing closed, as it must), and the message went in with 499 recipients (send() now fails on that 451).
        sandbox: { timeoutMs: 30_000 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const to = Array.from({ length: 500 }, (_, i) => `gone${i}@${['a', 'b', 'c', 'd', 'e'][i % 5]}.example`);
      const id = await s.send('sender@example.test', to);
      const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
      assert.equal(e.outcomes.length, 500, 'every recipient was taken at RCPT');
      assert.ok(e.removed && e.bounceId, 'every recipient bounced in one attempt');
      await until('the bounce delivered', () => sink.messages.some((m) => m.from === '' && m.to[0] === 'sender@example.test'), { timeoutMs: 60_000 });
      await s.scans(1);
      const bounces = sink.messages.filter((m) => m.from === '');
      assert.equal(bounces.length, 1, 'one report, not one a recipient or a transaction');
      const read = await pythonReads(bounces[0]!.data);
      assert.deepEqual(read.defects, []);
      assert.equal(read.blocks.length, 501, 'the per-message block and one for each recipient');
      assert.deepEqual(new Set(read.blocks.slice(1).map((b) => b['Final-Recipient'])), new Set(to.map((r) => `rfc822; ${r}`)));
      assert.ok(read.blocks.slice(1).every((b) => b.Action === 'failed' && b.Status === '5.1.1'));
      assert.ok(read.longest <= 998 && !read.eightBit);
    } finally {
      await s.stop();
      await sink.close();
    }
  });

  test('the bounce to a sender at an IDN domain reaches a next hop that offers neither 8BITMIME nor SMTPUTF8 (its To: in A-labels), instead of being refused and discarded', async () => {
    const seen = { rcpt: [] as string[], messages: [] as string[] };
    const peer = await startScriptedPeer({
      ehlo: (sock) => { sock.write('250 peer\r\n'); return 'answered'; },
      rcpt: (sock, line) => {
        seen.rcpt.push(line);
        if (/<gone@/.test(line)) { sock.write('550 5.1.1 no such user\r\n'); return 'answered'; }
      },
      endOfData: (_sock, message) => { seen.messages.push(message); },
    });
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [3600] }) }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const c = await SmtpTestClient.connect(s.port());
      await c.hello();
      const id = await sendWithParams(c, '<info@m\u00fcnchen.example> SMTPUTF8', ['<gone@example.net>'], 'From: info@xn--mnchen-3ya.example\r\nSubject: hi\r\n\r\nhello\r\n');
      await c.quit();
      const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
      const b = await s.nextAttempt((x) => x.id === e.bounceId, { timeoutMs: 30_000, past: true });
      assert.deepEqual(b.outcomes.map((o) => [o.recipient, o.status, o.reply]), [['info@m\u00fcnchen.example', 'delivered', '250 2.0.0 queued']]);
      assert.ok(seen.rcpt.includes('RCPT TO:<info@xn--mnchen-3ya.example>'), seen.rcpt.join(' | '));
      assert.match(seen.messages.at(-1)!, /^To: <info@xn--mnchen-3ya\.example>\r$/m);
    } finally {
      await s.stop();
      peer.close();
    }
  });
});

describe('one-attempt-at-a-time', () => {
  // At most one delivery attempt per message at a time, each reading what the one before it recorded, and nothing
  // written for a message after its removal: the queue runner hears of a message from its scans, from the process
  // that spooled it (notify: a worker's announcement, which reaches the queue process up to a batch later), and from
  // its own retry timers, in any order.
  test('a message\'s announcement arriving after its first attempt (the scan found it first): the next attempt reads that attempt\'s state, the delivered recipient is not sent to again', async () => {
    let refuseLater = true;
    const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null) });
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [0.5] }) }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      // Accepted from the first attempt's end on, whatever comes next: the announcement below, or (on a machine that
      // kept this test from it for 0.5 s) the retry, which with later@ still refused made the removal attempt 3.
      s.queue!.onAttempt((e) => { if (e.attempt === 1) refuseLater = false; });
      const id = await s.send('a@origin.test', ['ok@dest.test', 'later@dest.test']);
      const first = await s.nextAttempt((e) => e.id === id, { past: true });
      assert.equal(first.removed, false, 'later@ deferred');
      await until('the first attempt over', () => s.queue!.activeCount === 0);
      // What child.ts does with a worker's 'spooled' message, here after the attempt the scan started (in a server a
      // scan may run before the worker's batch of announcements is sent, ANNOUNCE_BATCH_MS).
      s.queue!.notify(id);
      const last = await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
      const copies = (rcpt: string): number => sink.messages.filter((m) => m.to.includes(rcpt)).length;
      assert.equal(copies('ok@dest.test'), 1, 'the recipient delivered at the first attempt: once');
      assert.equal(copies('later@dest.test'), 1);
      assert.equal(last.attempt, 2, 'the second attempt, counted on from the first');
      const queueDir = join(s.dir, 'data', 'spool', 'queue');
      await until('nothing left in the queue folder (the state file removed with the message)', () => readdirSync(queueDir).length === 0);
    } finally {
      await s.stop();
      await sink.close();
    }
  });

  test('a message that comes due again while its attempt is still under way: not attempted twice at once, and attempted once that attempt ends (not at the next scan)', async () => {
    let refusals = 0;
    const sink = await startSink({ decide: (stage) => (stage === 'rcpt' && refusals++ === 0 ? { code: 451, text: '4.2.0 Try again later' } : null) });
    const s = await startDeliveryServer({
      // Retried 1 ms after a deferral; scans far apart, so only the runner's own schedule brings the retry.
      config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [0.001], scanIntervalMs: 600_000 }) }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      let concurrent = 0;
      s.queue!.onAttempt((e) => {
        if (e.attempt !== 1 || e.removed) return;
        // The deferral is recorded, the retry scheduled, the attempt not over yet. Once the retry is due (within 1 ms
        // of its scheduling), something wakes the runner: here the message's own announcement, come late.
        for (const start = performance.now(); performance.now() - start < 3;); // the retry is due by now
        s.queue!.notify(e.id);
        concurrent = s.queue!.activeCount;
      });
      const id = await s.send('a@origin.test', ['b@dest.test']);
      const last = await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
      assert.equal(last.attempt, 2);
      assert.equal(concurrent, 1, 'no second attempt started beside the first');
      assert.equal(sink.messages.length, 1);
    } finally {
      await s.stop();
      await sink.close();
    }
  });

  test('postern queue retry racing an attempt: the retry does not put back the state it read, undoing the attempt\'s record (the recipient it delivered sent to again)', async () => {
    let mode: 'defer' | 'later' | 'accept' = 'defer';
    const sink = await startSink({
      decide: (stage, address) => (stage === 'rcpt' && (mode === 'defer' || (mode === 'later' && address.startsWith('later@'))) ? { code: 451, text: '4.2.0 Try again later' } : null),
    });
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], scanIntervalMs: 200 }) }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    const faults = diskFaults();
    let cliPid = 0;
    try {
      const id = await s.send('a@origin.test', ['ok@dest.test', 'later@dest.test']);
      await s.nextAttempt((e) => e.id === id, { past: true });
      // `queue retry` reads the state of that attempt and stops as it starts writing (its first temporary file).
      faults.armFor('open-stop', '.tmp');
      const retrying = runCli(['queue', 'retry', id, '-c', join(s.dir, 'postern.yaml')], { env: faults.env, onSpawn: (pid) => { cliPid = pid; } });
      try {
        await until('the retry stopped as it writes', () => faults.taken('open-stop') && cliPid > 0 && isStopped(cliPid));
        // Meanwhile an attempt (`postern queue retry` run a moment before, say) delivers to ok@ and records that.
        mode = 'later';
        await runCli(['queue', 'retry', id, '-c', join(s.dir, 'postern.yaml')]);
        await s.nextAttempt((e) => e.id === id && e.attempt === 2, { past: true });
        // Before the stopped retry goes on: the attempt it asks for may start before this test hears that it ended.
        mode = 'accept';
      } finally {
        if (cliPid) process.kill(cliPid, 'SIGCONT');
      }
      const retried = await retrying;
      assert.equal(retried.code, 0, retried.stderr);
      await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
      const copies = (rcpt: string): number => sink.messages.filter((m) => m.to.includes(rcpt)).length;
      assert.equal(copies('ok@dest.test'), 1, 'the recipient delivered at the second attempt: once');
      assert.equal(copies('later@dest.test'), 1);
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('retry-request-during-attempt', () => {
  // A `postern queue retry` made while an attempt of the message is under way asks for an attempt after it (the one
  // under way may have connected before the administrator fixed what made it fail). The request file now stays until
  // its attempt is recorded (retry-request-kept.test.ts); a second request written over it during that attempt was
  // skipped by the scans (taken already) and removed with the first one's attempt: the message then waited for its
  // recorded retry time, an hour here.
  test('a retry request made during an attempt of the message gets an attempt of its own after it', { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-retry-during-'));
    const dataDir = join(dir, 'data');
    // While `holding`, the next hop does not answer RCPT: the attempt stays under way.
    let holding = true;
    const held: net.Socket[] = [];
    const peer = await startScriptedPeer({ rcpt: (s) => { if (!holding) return; held.push(s); return 'stop'; } });
    let s: DeliveryServer | null = null;
    try {
      let id: string;
      ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port));

      await retryMessages(s.spools, [id]);
      await until('the requested attempt is under way', () => held.length === 1, { timeoutMs: 60_000 });
      await retryMessages(s.spools, [id]); // the next hop has been fixed meanwhile, say
      await s.scans(2, 60_000); // the second request seen while the first one's attempt is under way

      holding = false;
      held[0]!.write('451 4.3.0 try again later\r\n');
      const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
      assert.equal(first.removed, false, 'the attempt under way is deferred');
      const second = await s.nextAttempt((e) => e.id === id && e !== first, { timeoutMs: 60_000, past: true });
      assert.equal(second.removed, true, 'the second request made an attempt of its own, not one an hour later');
      await until('the request removed with its attempt made', async () => (await s!.spools.readDueRequest(id)) === null);
    } finally {
      await s?.stop();
      peer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a scan while the request of a recorded attempt is being removed makes no second attempt', { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-retry-clearing-'));
    const dataDir = join(dir, 'data');
    const peer = await startScriptedPeer({ rcpt: (s) => { s.write('451 4.3.0 try again later\r\n'); return 'answered'; } });
    let s: DeliveryServer | null = null;
    try {
      let id: string;
      ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port));
      // A slow disk: the request's removal ends only after a whole scan has run meanwhile.
      const server = s;
      const clear = server.spools.clearDueRequest.bind(server.spools);
      let cleared = false;
      server.spools.clearDueRequest = async (...args) => {
        await server.scans(1, 60_000);
        await clear(...args);
        cleared = true;
      };

      await retryMessages(server.spools, [id]);
      const first = await server.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
      assert.equal(first.removed, false);
      await until('the request removed', () => cleared, { timeoutMs: 60_000 });
      await server.scans(2, 60_000);
      assert.equal((await server.spools.readDueRequest(id)), null, 'the request is gone');
      assert.deepEqual(server.attempts.filter((e) => e.id === id).map((e) => e.attempt), [first.attempt], 'one attempt for one request');
    } finally {
      await s?.stop();
      peer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a retry request made during a scheduled attempt (no request of its own) gets an attempt after it, not the retry time', { timeout: 120_000 }, async () => {
    // The attempt under way was due by the schedule: the request taken during it is for the one after it ('after'). Its
    // record scheduled the message an hour on, and that schedule stood: the request waited an hour for its attempt.
    const dir = await mkdtemp(join(tmpdir(), 'postern-retry-during-scheduled-'));
    const dataDir = join(dir, 'data');
    let holding = true;
    const held: net.Socket[] = [];
    const peer = await startScriptedPeer({ rcpt: (s) => { if (!holding) return; held.push(s); return 'stop'; } });
    let s: DeliveryServer | null = null;
    try {
      let id: string;
      ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port, null));

      await until('the scheduled attempt is under way', () => held.length === 1, { timeoutMs: 60_000 });
      await retryMessages(s.spools, [id]); // the next hop has been fixed meanwhile, say
      await s.scans(2, 60_000); // the request seen while the attempt is under way

      holding = false;
      held[0]!.write('451 4.3.0 try again later\r\n');
      const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
      assert.equal(first.removed, false, 'the attempt under way is deferred');
      const second = await s.nextAttempt((e) => e.id === id && e !== first, { timeoutMs: 60_000, past: true });
      assert.equal(second.removed, true, 'the request made an attempt of its own, not one an hour later');
      await until('the request removed with its attempt made', async () => (await s!.spools.readDueRequest(id)) === null);
    } finally {
      await s?.stop();
      peer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a retry request written while the runner removes the one whose attempt it made stands, and gets its attempt', { timeout: 120_000 }, async () => {
    // The runner read the request file, found the one it took, and then unlinked the path: a `postern queue retry` run in
    // between (another process: any moment) was removed with it, and the message waited for its retry time (an hour here).
    const dir = await mkdtemp(join(tmpdir(), 'postern-retry-clearing-race-'));
    const dataDir = join(dir, 'data');
    let accept = false;
    const peer = await startScriptedPeer({ rcpt: (s) => { if (accept) return; s.write('451 4.3.0 try again later\r\n'); return 'answered'; } });
    let s: DeliveryServer | null = null;
    // The queue runner's removal of the request file, whatever its name then, waits for a `postern queue retry` run now.
    const fsp = createRequire(import.meta.url)('node:fs/promises') as typeof import('node:fs/promises');
    const realUnlink = fsp.unlink;
    let interpose: ((path: string) => Promise<void>) | null = null;
    fsp.unlink = (async (path: Parameters<typeof realUnlink>[0]) => {
      const hook = interpose;
      if (hook) await hook(String(path));
      return realUnlink(path);
    }) as typeof realUnlink;
    syncBuiltinESMExports();
    try {
      let id: string;
      ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port));
      const config = join(s.dir, 'postern.yaml');
      let retried = false;
      s.queue!.onAttempt((e) => {
        if (e.id !== id || interpose) return;
        accept = true; // the next hop fixed meanwhile
        interpose = async (path) => {
          if (retried || !path.includes(`${id}.due`)) return;
          retried = true;
          const r = await runCli(['queue', 'retry', id, '-c', config]);
          assert.equal(r.code, 0, r.stderr);
        };
      });

      await retryMessages(s.spools, [id]);
      const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
      assert.equal(first.removed, false, 'the requested attempt is deferred');
      await until('the second retry run as the first request is removed', () => retried, { timeoutMs: 60_000 });
      const second = await s.nextAttempt((e) => e.id === id && e !== first, { timeoutMs: 60_000, past: true });
      assert.equal(second.removed, true, 'the second request made an attempt of its own, not one an hour later');
    } finally {
      fsp.unlink = realUnlink;
      syncBuiltinESMExports();
      await s?.stop();
      peer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  /**
   * A server delivering to `port`, and a message in its spool whose next attempt is an hour away (retries hourly);
   * `deferredUntil` null: never attempted, due at once.
   */
  async function serverWithDeferredMessage(dataDir: string, port: number, deferredUntil: Date | null = new Date(Date.now() + 3600_000)): Promise<{ s: DeliveryServer; id: string }> {
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    const [id] = await spoolMessages(spool, ['someone@next.test'], deferredUntil ? { deferredUntil } : {});
    spool.close();
    const s = await startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600], scanIntervalMs: 200 },
      }),
      resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
    });
    return { s, id: id! };
  }
});

describe('show-terminal', () => {
  /**
   * `postern queue show ID` prints the message as spooled, whose bytes its sender chose. On a terminal (a pty,
   * from script(1)) its control characters are shown, not acted on: an ESC sequence in a message cleared the
   * operator's screen, set the window title (or, in some terminals, wrote the clipboard), and a bare CR hid
   * what came before it on the line. Into a pipe the bytes are written unchanged.
   */
  const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
  const BODY = 'Subject: invoice\x1b]0;owned\x07\r\n\r\nsee below\x1b[2J\rhidden\u009b31m red\r\n';

  test('queue show on a terminal shows a message\'s control characters; into a pipe, the bytes as they are', { ...needs('script'), timeout: 60_000 }, async () => {
    const s = await startTestServer({ config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in')] }) });
    try {
      const id = await submitMessage(s.port('in'), 'a@example.test', ['b@example.test'], BODY);
      const config = join(s.dir, 'postern.yaml');
      const command = [process.execPath, MAIN, 'queue', 'show', id, '-c', config].map((a) => `'${a}'`).join(' ');
      const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 });
      assert.ok(onTerminal.includes(`*** MESSAGE CONTENTS ${id} ***`), onTerminal.toString());
      assert.equal(onTerminal.indexOf(0x1b), -1, 'no ESC reaches the terminal');
      assert.equal(onTerminal.indexOf(Buffer.from('\u009b')), -1, 'no C1 control either');
      const text = onTerminal.toString();
      assert.match(text, /Subject: invoice\^\[\]0;owned\^G/);
      assert.match(text, /see below\^\[\[2J\^Mhidden<U\+009B>31m red/);

      const piped = execFileSync(process.execPath, [MAIN, 'queue', 'show', id, '-c', config], { timeout: 30_000 });
      assert.ok(piped.includes(Buffer.from(BODY.replace(/\r\n$/, ''))), 'the bytes as spooled');
    } finally {
      await s.stop();
    }
  });
});

describe('list-terminal', () => {
  /**
   * `postern queue list` and `queue show` print each recipient's last error: the next hop's reply, whose text
   * whoever runs that host chose (any recipient domain's MX). Its control characters never reach the operator's
   * terminal: C1 ones included (U+009B is CSI to a terminal that takes C1 controls in UTF-8, as xterm does),
   * and the line separators U+2028/U+2029. Stored that way, the log line and the bounce carry none either.
   * `queue show` prints the envelope too: the client certificate's subject, which the client chose (any
   * certificate, on a listener that requests one), is shown with its controls escaped like the message's, and
   * kept at most 512 characters long (scripts of the SMTP hooks see it whole).
   */
  const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
  const HOSTILE = 'mailbox busy \u009b2J\u009b]0;owned\u0007 wiped\u2028line two\u0085three';
  // eslint-disable-next-line no-control-regex
  const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]/;

  let sink: Sink | undefined;
  let s: DeliveryServer | undefined;
  after(async () => {
    await s?.stop();
    await sink?.close();
  });

  test('a next hop\'s reply with terminal controls: queue list and show on a terminal show none of them', { ...needs('script'), timeout: 90_000 }, async () => {
    sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 450, text: `4.2.1 ${HOSTILE}` } : null) });
    s = await startDeliveryServer({
      config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: { mode: 'none' } })], delivery: smarthostDelivery(sink.port, { scanIntervalMs: 100 }) }),
    });
    const id = await s.send('a@example.test', ['b@example.test']);
    const attempt = await s.nextAttempt((e) => e.id === id, { past: true, timeoutMs: 60_000 });
    const stored = attempt.outcomes[0]!.reply;
    assert.match(stored, /^450 4\.2\.1 mailbox busy [^]*wiped[^]*line two[^]*three$/, JSON.stringify(stored));
    assert.doesNotMatch(stored, CONTROL, `what is stored carries no control character: ${JSON.stringify(stored)}`);

    const config = join(s.dir, 'postern.yaml');
    for (const args of [['queue', 'list'], ['queue', 'show', id, '--envelope']]) {
      const command = [process.execPath, MAIN, ...args, '-c', config].map((a) => `'${a}'`).join(' ');
      const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }).toString('utf8');
      assert.match(onTerminal, /mailbox busy/, onTerminal);
      assert.doesNotMatch(onTerminal.replace(/\r\n/g, '\n'), CONTROL, `${args.join(' ')}: ${JSON.stringify(onTerminal)}`);
    }
  });

  /** The queue id of a message sent over STARTTLS with `device`'s certificate. */
  async function queuedWithCertificate(port: number, pki: TestPki, device: { cert: string; key: string }): Promise<string> {
    const c = await SmtpTestClient.connect(port);
    await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key } });
    const r = await c.sendMail('a@example.test', ['b@example.test']);
    assert.equal(r.code, 250, r.text);
    await c.quit();
    return /queued as (\w+)/.exec(r.text)![1]!;
  }

  test('a client certificate whose subject carries C1 controls: queue show on a terminal shows none of them', { ...needs('script'), timeout: 90_000 }, async () => {
    const pki = await makeTestPki();
    const device = await createSelfSignedCertificate({ commonName: 'printer\u009b2J\u009b]0;owned\u0085 lobby' });
    const server = await startTestServer({
      config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: testServerTls(pki, { clientCertificates: 'request' }) })] }),
    });
    try {
      const id = await queuedWithCertificate(server.port('in'), pki, device);
      const command = [process.execPath, MAIN, 'queue', 'show', id, '--envelope', '-c', join(server.dir, 'postern.yaml')].map((a) => `'${a}'`).join(' ');
      const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }).toString('utf8');
      assert.match(onTerminal, /client_certificate: CN=printer.*lobby/, onTerminal);
      assert.doesNotMatch(onTerminal.replace(/\r\n/g, '\n'), CONTROL, JSON.stringify(onTerminal));
    } finally {
      await server.stop();
    }
  });

  test('an SMTPUTF8 recipient with bidi overrides and isolates: refused at RCPT; spooled by an earlier release, queue list on a terminal shows them escaped', { ...needs('script'), timeout: 90_000 }, async () => {
    const server = await startTestServer({
      config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: { mode: 'none' } })] }),
    });
    try {
      // U+202E shows "evil" backwards; U+2066 … U+2069 an isolate around it.
      const address = 'ceo\u202Elive\u202C\u2066x\u2069@example.test';
      const c = await SmtpTestClient.connect(server.port('in'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<a@example.test> SMTPUTF8')).code, 250);
      assert.equal((await c.command(`RCPT TO:<${address}>`)).code, 553, 'refused at the door (envelope-path.ts)');
      await c.quit();
      // Releases before that took it: such a message may still be in a spool.
      const id = server.runtime.spool.newId();
      const writer = server.runtime.spool.create(id);
      writer.write(Buffer.from('Subject: t\r\n\r\nhi\r\n'));
      const now = new Date().toISOString();
      await writer.commit({
        version: 1, id, receivedAt: now, sender: 'a@example.test', recipients: [{ address }], size: 0, smtputf8: true,
        session: { listener: 'in', remoteAddress: '127.0.0.1', helo: 'client.example', authenticatedUser: null, clientCertificate: null },
        attempts: 0, nextAttemptAt: new Date(Date.now() + 3_600_000).toISOString(), errors: [],
      });
      const command = [process.execPath, MAIN, 'queue', 'list', '-c', join(server.dir, 'postern.yaml')].map((a) => `'${a}'`).join(' ');
      const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }).toString('utf8');
      assert.match(onTerminal, /ceo<U\+202E>live<U\+202C><U\+2066>x<U\+2069>@example\.test/, onTerminal);
      assert.doesNotMatch(onTerminal, /[\u202a-\u202e\u2066-\u2069]/u, JSON.stringify(onTerminal));
    } finally {
      await server.stop();
    }
  });

  test('a 20,000-character certificate subject: scripts see it whole, the queued envelope keeps 512 characters and "..."', { timeout: 90_000 }, async () => {
    const pki = await makeTestPki();
    const name = `device-${'x'.repeat(20_000)}`;
    const device = await createSelfSignedCertificate({ commonName: name });
    const server = await startTestServer({
      config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: testServerTls(pki, { clientCertificates: 'request' }) })] }),
      scripts: { 'rcptto.ts': `export default (ctx: RcptToContext) => ctx.connection.clientCertificate?.subject.dn === ${JSON.stringify(`CN=${name}`)} ? undefined : reject('not the whole name');` },
    });
    try {
      const id = await queuedWithCertificate(server.port('in'), pki, device);
      const shown = execFileSync(process.execPath, [MAIN, 'queue', 'show', id, '--json', '-c', join(server.dir, 'postern.yaml')], { timeout: 30_000 }).toString('utf8');
      const { subject, issuer } = (JSON.parse(shown) as { session: { clientCertificate: { subject: string; issuer: string } } }).session.clientCertificate;
      assert.equal(subject, `CN=${name}`.slice(0, 512) + '...');
      assert.equal(issuer, subject, 'self-signed: the issuer is the subject, cut the same way');
    } finally {
      await server.stop();
    }
  });
});

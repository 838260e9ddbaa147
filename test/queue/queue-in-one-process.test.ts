// The queue in one server process: bookkeeping faults, the clock set back, enabling it by a reload, expiry (a
// future-dated message too), the loop count, copies of a message, reads and scans at the descriptor limit, retries
// and bounces, retry requests and the state file's shape. One file for what were several (one test process and one
// load of the engine instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs, { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { syncBuiltinESMExports } from 'node:module';
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { spawnSync } from 'node:child_process';
import type net from 'node:net';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, fakeResolver, type DeliveryServer, parseDsn } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { dkimKeyPair } from '../helpers/dkim.ts';
import { exhaustDescriptors } from '../helpers/process-resources.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';
import { retryMessages } from '../../engine/queue/admin.ts';

describe('bookkeeping-faults', () => {
  // A message a next hop accepted is not sent again because the spool could not record it (a full disk):
  // the "done" mark of a journal message fails with ENOSPC; the outcome is kept in memory and written later.
  /** Makes the journal's done-list writes (`\n<id>\n`, one write each) fail with ENOSPC until restored. */
  function failDoneMarks(): { failures: number; reached(n: number): Promise<void>; restore(): void } {
    const real = fs.writeSync;
    let failures = 0;
    const waiting: Array<{ n: number; resolve(): void }> = [];
    (fs as { writeSync: unknown }).writeSync = (fd: number, data: unknown, ...rest: unknown[]): number => {
      if (typeof data === 'string' && /^\n?[0-9a-z]{8,32}\n$/.test(data)) {
        failures++;
        for (const w of waiting.filter((w) => failures >= w.n)) w.resolve();
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
      }
      return (real as (...a: unknown[]) => number)(fd, data, ...rest);
    };
    syncBuiltinESMExports();
    return {
      get failures() { return failures; },
      reached: (n) => (failures >= n ? Promise.resolve() : new Promise((resolve) => waiting.push({ n, resolve }))),
      restore() {
        fs.writeSync = real;
        syncBuiltinESMExports();
      },
    };
  }

  test('a delivered message whose done mark cannot be written is not delivered again; the mark is written once there is room', async () => {
    const sink = await startSink({});
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        localDomains: ['example.test'],
        delivery: smarthostDelivery(sink.port, { retrySchedule: [0.05] }),
      }),
    });
    const fault = failDoneMarks();
    try {
      const id = await s.send('a@example.test', ['b@example.test']);
      await fault.reached(4); // the first done mark and three retries of it failed
      assert.equal(sink.messages.length, 1, 'delivered once, not at every retry');
      assert.equal(await s.runtime.spool.has(id), true, 'still in the spool: its removal is not recorded yet');
      assert.ok(s.logs.some((l) => l.id === id && /cannot record the outcome/.test(String(l.msg))), 'the failure is logged');
      const removed = s.nextAttempt((e) => e.id === id && e.removed);
      fault.restore();
      await removed;
      assert.equal(await s.runtime.spool.has(id), false);
      assert.equal(sink.messages.length, 1);
    } finally {
      fault.restore();
      await s.stop();
      await sink.close();
    }
  });

  /** A server delivering to a sink that refuses later@… with 451 until `acceptLater()`; retried every 50 ms. */
  async function startRefusingLater(): Promise<{ sink: Awaited<ReturnType<typeof startSink>>; s: Awaited<ReturnType<typeof startDeliveryServer>>; acceptLater(): void }> {
    let refuseLater = true;
    const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && refuseLater && address.startsWith('later@') ? { code: 451, text: '4.2.0 Try again later' } : null) });
    const s = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        localDomains: ['example.test'],
        delivery: smarthostDelivery(sink.port, { retrySchedule: [0.05] }),
      }),
    });
    return { sink, s, acceptLater: () => { refuseLater = false; } };
  }

  test('a recipient accepted by the next hop is not sent to again when the state file of a partly delivered message cannot be written', async () => {
    const { sink, s, acceptLater } = await startRefusingLater();
    const fsp = (await import('node:fs/promises')).default;
    const realRename = fsp.rename;
    let failures = 0;
    (fsp as { rename: unknown }).rename = async (from: string, to: string): Promise<void> => {
      if (String(to).endsWith('.state')) {
        failures++;
        throw Object.assign(new Error('ENOSPC: no space left on device, rename'), { code: 'ENOSPC', errno: -28, syscall: 'rename' });
      }
      return realRename(from, to);
    };
    syncBuiltinESMExports();
    const restore = (): void => { fsp.rename = realRename; syncBuiltinESMExports(); };
    try {
      const id = await s.send('a@example.test', ['ok@example.test', 'later@example.test']);
      await until('three failed state writes', () => failures >= 3);
      assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1, 'the accepted recipient got it once');
      assert.ok(sink.attempts.length >= 3, 'the refused recipient was tried again');
      // Removed after the failed rename throws (a read right after the third failure could come first): waited for.
      await until('no temporary state file left behind by a failed write', () => readdirSync(join(s.dir, 'data', 'spool', 'queue')).filter((f) => f.endsWith('.tmp')).length === 0);
      const removed = s.nextAttempt((e) => e.id === id && e.removed);
      restore();
      acceptLater();
      await removed;
      assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1);
      assert.equal(sink.messages.filter((m) => m.to.includes('later@example.test')).length, 1);
    } finally {
      restore();
      await s.stop();
      await sink.close();
    }
  });

  // The state file of a partly delivered message is the only record of the recipients delivered in earlier
  // attempts. Its removal, once the last one was delivered, followed a done mark of the journal message that was
  // never synced: a power cut could keep the state file's removal (its folder was synced) and lose the mark, and
  // the message came back without its state, to be sent to every recipient again. The mark is now synced first;
  // when that fails, the state file stays and the removal is tried again later.
  test('the state file of a partly delivered message is removed only once its done mark is on disk', async () => {
    const { sink, s, acceptLater } = await startRefusingLater();
    const realFsync = fs.fsync;
    let failures = 0;
    (fs as { fsync: unknown }).fsync = (fd: number, cb: (err: Error | null) => void): void => {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`).endsWith('.done')) {
        failures++;
        process.nextTick(cb, Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO', errno: -5, syscall: 'fsync' }));
        return;
      }
      realFsync(fd, cb);
    };
    syncBuiltinESMExports();
    const restore = (): void => { fs.fsync = realFsync; syncBuiltinESMExports(); };
    try {
      const id = await s.send('a@example.test', ['ok@example.test', 'later@example.test']);
      await s.nextAttempt((e) => e.id === id && e.attempt === 1, { past: true });
      const state = join(s.dir, 'data', 'spool', 'queue', `${id}.state`);
      assert.ok(fs.existsSync(state), 'the first attempt recorded ok@ as delivered');
      acceptLater();
      const second = await s.nextAttempt((e) => e.id === id && e.outcomes.some((o) => o.recipient === 'later@example.test' && o.status === 'delivered'), { past: true });
      assert.ok(failures >= 1, 'the done mark was synced before the state file was removed');
      assert.equal(second.removed, false, 'not reported removed: its removal is not on disk');
      assert.ok(fs.existsSync(state), 'the state file, the record of ok@\'s delivery, is still there');
      const removed = s.nextAttempt((e) => e.id === id && e.removed);
      restore();
      await removed;
      assert.equal(fs.existsSync(state), false);
      assert.equal(await s.runtime.spool.has(id), false);
      assert.equal(sink.messages.filter((m) => m.to.includes('ok@example.test')).length, 1, 'ok@ got it once');
      assert.equal(sink.messages.filter((m) => m.to.includes('later@example.test')).length, 1, 'later@ got it once');
    } finally {
      restore();
      await s.stop();
      await sink.close();
    }
  });
});

describe('clock-set-back', () => {
  // Mail spooled while the wall clock ran a day ahead, the clock then set right and the server started again (a VM
  // restored from a snapshot, an RTC a day off until NTP stepped it): by the times on disk a message never attempted
  // was due "tomorrow", and a message deferred by a 1 s retry step was due a day and a second ahead. Each was due
  // after the longest retry step instead (here an hour; 4 hours by default). A message never attempted is due at
  // once, whatever its id says; a deferred one at most its own retry step ahead.
  const DAY = 86_400_000;

  test('mail spooled while the clock ran a day ahead is due by its own schedule after a restart, not after the longest retry step', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-clock-back-'));
    const sink = await startSink();
    try {
      const spool = new Spool(join(dir, 'data', 'spool'));
      await spool.init();
      const ahead = new Date(Date.now() + DAY);
      const [fresh] = await spoolMessages(spool, ['fresh@dest.test'], { receivedAt: ahead });
      const [deferred] = await spoolMessages(spool, ['deferred@dest.test'], { receivedAt: ahead, deferredUntil: new Date(ahead.getTime() + 1000), attempts: 1 });
      spool.close();
      const s = await startDeliveryServer({
        dataDir: join(dir, 'data'),
        config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [1, 3600] }) }),
        scripts: {},
      });
      try {
        for (const id of [fresh!, deferred!]) {
          const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
          assert.equal(e.removed, true, `${id} delivered`);
        }
        assert.deepEqual(sink.messages.map((m) => m.to[0]).sort(), ['deferred@dest.test', 'fresh@dest.test']);
      } finally {
        await s.stop();
      }
    } finally {
      await sink.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('enable-reload', () => {
  // Delivery is off without a `delivery` section: such a configuration only spools. Adding the section (enabled
  // by default once present) is a reload like any other, and the runner then delivers what waited in the spool.
  test('off by default; enabling it by reload delivers what the spool holds', async () => {
    const sink = await startSink();
    const s = await startDeliveryServer({
      config: configYaml({ localDomains: ['dest.test'], listeners: [testListener('in')] }),
    });
    try {
      const id = await s.send('me@origin.test', ['r@dest.test']);
      // The runner is told of a message when it is committed, before the 250: had it taken it, it would
      // hold it now (queued or in an attempt).
      assert.deepEqual([s.queue!.queuedCount, s.queue!.activeCount], [0, 0], 'the runner did not take it');
      assert.deepEqual(await s.runtime.spool.list(), [id], 'kept in the spool');
      assert.equal(s.attempts.length, 0);
      assert.ok(s.logs.some((l) => String(l.msg).startsWith('delivery disabled')));

      const reloaded = new Promise<{ ok: boolean; errors: string[] }>((resolve) => { const off = s.reloader.onReload((o) => { off(); resolve(o); }); });
      const file = join(s.dir, 'postern.yaml');
      await writeFile(file, `${await readFile(file, 'utf8')}delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${sink.port} } }
`);
      assert.equal((await reloaded).ok, true);
      await sink.waitFor(1); // the swap makes the runner scan at once
      assert.deepEqual(sink.messages[0]!.to, ['r@dest.test']);
      await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
      assert.deepEqual(await s.runtime.spool.list(), []);
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('expiry', () => {
  // A next hop that answers 4xx for ever: the message is retried until delivery.maxAgeHours, then bounces with
  // its last 4.x.x status and says it expired; that bounce (null sender) meets the same next hop, expires in
  // turn and is discarded — no bounce of a bounce, nothing left circling in the queue.
  test('4xx for ever: retried until maxAgeHours, one expiry bounce, which expires and is discarded', async () => {
    const sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 451, text: '4.3.0 try again some day' } : null) });
    const s = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test',
        listeners: [testListener('in')],
        // About a second and a half of age (a loaded machine may take that long over the first attempt: then it is the one that expires).
        delivery: smarthostDelivery(sink.port, { retrySchedule: [0.2], maxAgeHours: 0.0004 }),
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const id = await s.send('a@origin.test', ['b@dest.test']);
      const expired = await s.nextAttempt((e) => e.id === id && e.removed, { past: true, timeoutMs: 60_000 });
      assert.ok(expired.bounceId, 'a bounce was spooled');
      assert.ok(s.logs.some((l) => l.id === id && l.bounce === expired.bounceId && l.expired === true), 'the bounce says it expired');
      const bounce = await s.nextAttempt((e) => e.id === expired.bounceId && e.removed, { past: true, timeoutMs: 60_000 });
      assert.equal(bounce.bounceId, null, 'no bounce of a bounce');
      assert.ok(s.logs.some((l) => l.id === expired.bounceId && /undeliverable bounce \(null sender\): discarded/.test(String(l.msg))));
      await until('the queue empty', async () => (await s.spools.list()).length === 0);
      const made = new Set(s.attempts.map((e) => e.id));
      assert.deepEqual([...made].sort(), [id, expired.bounceId!].sort(), 'two messages in all');
      assert.equal(sink.messages.length, 0);
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('expiry-future-dated', () => {
  // Mail accepted while the wall clock ran years ahead (a machine that booted in 2038, a typo in `date -s`), then the
  // clock set right: by the wall clock its age stays negative until the clock catches up, so it was retried every
  // retry step for years and never bounced; its sender never learned. Its age is now what its failed attempts waited
  // at least by the retry schedule: here 3 attempts of 1 h each are past maxAgeHours 2 (bounced at the 4th), 1 is not.
  test('mail dated years ahead (a clock set back since) expires by the waits of its attempts, not when the clock catches up', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-future-dated-'));
    const sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 451, text: '4.3.0 try again some day' } : null) });
    try {
      const spool = new Spool(join(dir, 'data', 'spool'));
      await spool.init();
      const receivedAt = new Date(Date.now() + 12 * 365 * 86400_000);
      const due = new Date(Date.now() - 1000);
      const [old] = await spoolMessages(spool, ['old@dest.test'], { receivedAt, deferredUntil: due, attempts: 3 });
      const [young] = await spoolMessages(spool, ['young@dest.test'], { receivedAt, deferredUntil: due, attempts: 1 });
      spool.close();
      const s = await startDeliveryServer({
        dataDir: join(dir, 'data'),
        config: configYaml({ hostname: 'postern.test', listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], maxAgeHours: 2 }) }),
        scripts: {},
      });
      try {
        const a = await s.nextAttempt((e) => e.id === old, { past: true, timeoutMs: 60_000 });
        assert.equal(a.removed, true, 'bounced: its 3 attempts waited 3 h, past maxAgeHours 2');
        assert.ok(a.bounceId, 'its sender is told');
        const b = await s.nextAttempt((e) => e.id === young, { past: true, timeoutMs: 60_000 });
        assert.deepEqual([b.removed, b.outcomes.map((o) => o.status)], [false, ['temporary']], 'deferred: 1 h waited, below 2');
      } finally {
        await s.stop();
      }
    } finally {
      await sink.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('loop-count', () => {
  // The mail-loop check counts Received fields in the header section. It looked for the section's end as CRLF
  // CRLF only: in a message whose lines end in a bare LF (as some clients send it, and as it is spooled), it
  // counted the body's lines too, and a body quoting more than 50 "Received:" lines (a forwarded bounce, a log)
  // bounced as a mail loop (5.4.6). A real loop is still caught whatever the line ends: a client's message with 50
  // Received fields in its header at the door (554 5.4.6 at the end of DATA, test/smtp/received.test.ts, hop-limit), and one
  // that passes it with fewer but leaves with more than 50 (here a data script adds two) by the queue.
  test('bare LF line ends: Received lines in the body are no loop; a loop in the header still is (at the door, or as it leaves)', async () => {
    const sink = await startSink();
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }) }),
      scripts: {
        'rcptto.ts': 'export default () => accept();',
        'data.ts': `export default (ctx) => ctx.data.headers.some(([n, v]) => n === 'Subject' && v === 'looping')
  ? accept({ headers: [{ op: 'add', name: 'Received', value: 'from a by b' }, { op: 'add', name: 'Received', value: 'from c by d' }] }) : undefined;`,
      },
    });
    try {
      const quoted = Array.from({ length: 60 }, (_, i) => `Received: from hop${i}.example by hop${i + 1}.example`).join('\n');
      const body = await s.send('a@origin.test', ['b@dest.test'], `From: <a@origin.test>\nSubject: a quoted trace\n\n${quoted}\n`);
      const e = await s.nextAttempt((x) => x.id === body, { past: true });
      assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
      await assert.rejects(s.send('a@origin.test', ['c@dest.test'], `${quoted}\nFrom: <a@origin.test>\nSubject: looping\n\nbody\n`), /not queued: 554 5\.4\.6 /);
      const fewer = quoted.split('\n').slice(0, 49).join('\n'); // 49 and ours pass the door; the script's two make 52
      const header = await s.send('a@origin.test', ['c@dest.test'], `${fewer}\nFrom: <a@origin.test>\nSubject: looping\n\nbody\n`);
      const loop = await s.nextAttempt((x) => x.id === header, { past: true });
      assert.equal(loop.outcomes[0]!.status, 'permanent');
      assert.equal(loop.outcomes[0]!.enhanced, '5.4.6');
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('message-copies', () => {
  // A message went to nodemailer whole, as one Buffer: its data stream dot-stuffs a chunk into one new buffer (any line
  // that starts with a dot, a bare CR or a bare LF makes it copy all of it) and the socket keeps it until the next hop
  // has read it. A message to many destinations whose next hops take DATA and then read slowly was held once by the
  // attempt, as delivery.maxBytesInMemory counts it, and once more by each transaction: 8 destinations, 9 copies.
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
        // Logged in: the sender domain's keys sign only what a logged-in client sent.
        session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: 's@origin.test', clientCertificate: null },
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
});

describe('read-at-fd-limit', () => {
  // The queue runner at its open-file limit (a descriptor leak elsewhere, a flood of connections) with deferred mail
  // coming due: each attempt's read of its spool file failed with EMFILE and was logged at error, "cannot read the spool
  // file now: tried again later", once per message per retry — a queue of thousands gave thousands of identical lines a
  // minute that buried the one that said what happened. Now the first failure of an episode is logged at error, the
  // repeats at debug, and the read that works again says so once, with how many failed. No message is lost or counted.
  test('reads of deferred messages failing at the open-file limit are logged once per episode, and the recovery once', { timeout: 120_000 }, async () => {
    const sink = await startSink({ decide: (stage) => (stage === 'rcpt' ? { code: 451, text: '4.2.0 Try again later' } : null) });
    const s = await startDeliveryServer({
      config: configYaml({ localDomains: ['example.org'], listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { scanIntervalMs: 600_000, retrySchedule: [1] }) }),
    });
    try {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push(await s.send('a@example.com', ['b@example.org']));
      for (const id of ids) await s.nextAttempt((e) => e.id === id && e.attempt === 1, { past: true });
      const readFailures = (): Array<Record<string, unknown>> => s.logs.filter((l) => /cannot read the spool file now/.test(String(l.msg)));
      const full = exhaustDescriptors();
      try {
        // Each message comes due every second (retrySchedule [1]): 20 failed reads are four rounds of the five.
        await until('20 failed reads', () => { full.topUp(); return readFailures().length >= 20; }, { timeoutMs: 60_000 });
      } finally {
        full.release();
      }
      const recoveryLine = (): Record<string, unknown> | undefined => s.logs.find((l) => /reading spool files works again/.test(String(l.msg)));
      await until('a read that works again', () => recoveryLine() !== undefined, { timeoutMs: 30_000 }).catch(() => undefined);
      const recovered = recoveryLine();
      const errors = readFailures().filter((l) => Number(l.level) >= 50);
      assert.equal(errors.length, 1, `${readFailures().length} failed reads: logged at error once, not per message per retry`);
      assert.match(JSON.stringify(errors[0]), /EMFILE/, 'the cause');
      assert.ok(recovered && Number(recovered.failures) >= 20, 'the read that works again says so, with how many failed');
      // Nothing lost or counted against the messages: each is tried again, at its second attempt.
      for (const id of ids) await s.nextAttempt((e) => e.id === id && e.attempt === 2, { past: true });
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('scan-at-fd-limit', () => {
  // The queue runner at its open-file limit (a descriptor leak elsewhere, a flood of connections): every scan of the
  // spool fails with EMFILE. Each failure was logged at error with its stack, at every scan (scanIntervalMs, and each
  // message a worker spools asks for one): thousands of identical lines an hour that bury the one that says what
  // happened. Now the first failure of a kind is logged at error, the repeats at debug, and the scan that works again
  // says so once, with how many failed.
  test('scans failing at the open-file limit are logged once per episode, and the recovery once', async () => {
    const sink = await startSink({});
    const s = await startDeliveryServer({
      config: configYaml({ localDomains: ['example.org'], listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { scanIntervalMs: 60_000 }) }),
    });
    try {
      const failed = (): Array<Record<string, unknown>> => s.logs.filter((l) => /spool scan failed/.test(String(l.msg)) && Number(l.level) >= 50);
      const recovered = (): Array<Record<string, unknown>> => s.logs.filter((l) => /spool scan works again/.test(String(l.msg)));
      await s.queue!.scan(); // warm: what a scan opens lazily is open
      for (let episode = 1; episode <= 2; episode++) {
        const [failedBefore, recoveredBefore] = [failed().length, recovered().length];
        const full = exhaustDescriptors();
        try {
          for (let i = 0; i < 20; i++) {
            full.topUp(); // what the last scan closed
            await s.queue!.scan();
          }
        } finally {
          full.release();
        }
        // An episode ends at a scan that works. On a loaded machine a descriptor the process closes after topUp() (a
        // scan's folder handle, a socket) can let one scan in the middle succeed: that ends the episode honestly and the
        // next failure starts another. So the property: one error line per episode, each episode's end said once.
        const errors = failed().length - failedBefore;
        const endedWithin = recovered().length - recoveredBefore;
        assert.equal(errors, endedWithin + 1, `20 failed scans in episode ${episode}: logged at error once per episode (${endedWithin} ended by a scan that found a descriptor free)`);
        assert.ok(errors <= 5, `not per scan (${errors} error lines for 20 scans)`);
        assert.match(JSON.stringify(failed().at(-1)), /EMFILE/, 'the cause');
        await s.queue!.scan();
        assert.equal(recovered().length - recoveredBefore, endedWithin + 1, 'the scan that works again says so once');
        const failures = Number(recovered().at(-1)!.failures);
        assert.ok(failures >= 1 && failures <= 20, `with how many failed (${failures}; calls made during a scan share it)`);
        if (endedWithin === 0) assert.ok(failures > 1, `an episode of 20 scans counts more than one failure (${failures})`);
      }
      // And the queue still delivers.
      await s.send('a@example.com', ['b@example.org']);
      await s.nextAttempt((e) => e.outcomes.every((o) => o.status === 'delivered'), { past: true });
    } finally {
      await s.stop();
      await sink.close();
    }
  });
});

describe('retries-bounces', () => {
  // Retries on the configured schedule, per-recipient results, bounces (RFC 3464 DSNs) and when there are
  // none (null sender, NOTIFY=NEVER), and the pre-delivery script's reject and defer.
  let sink: Sink;
  let s: DeliveryServer;
  const refusals = new Map<string, number>();

  before(async () => {
    sink = await startSink({
      decide(stage, address) {
        if (stage !== 'rcpt') return null;
        const local = address.split('@')[0]!;
        if (local.startsWith('bad')) return { code: 550, text: `5.1.1 <${address}>: Recipient address rejected: User unknown` };
        const m = /^later(\d)/.exec(local); // laterN: 451 for the first N attempts
        if (m) {
          const n = refusals.get(address) ?? 0;
          refusals.set(address, n + 1);
          if (n < Number(m[1])) return { code: 451, text: '4.2.0 Try again later' };
        }
        return null;
      },
    });
    s = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test',
        sandbox: { timeoutMs: 1000 },
        listeners: [testListener('in')],
        // Scans every 200 ms rather than 5 s: 'two scans and no notice' (s.scans) then waits 0.4 s, not 10.
        delivery: smarthostDelivery(sink.port, { retrySchedule: [0.25, 0.75], scanIntervalMs: 200 }),
      }),
      scripts: {
        'rcptto.ts': `export default () => accept();`,
        'predelivery.ts': `
export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  log('CTX ' + JSON.stringify(ctx.message));
  if (ctx.destination.domain === 'refused.test') return reject('Policy says no', { code: 554, enhanced: '5.7.1' });
  if (ctx.destination.domain === 'held.test' && ctx.message.attempt < 3) return defer('Held for review');
}
`,
      },
    });
    s.queue!.onAttempt((e) => {
      if (e.attempt === 1 && !e.removed) firstStates.set(e.id, readFileSync(s.runtime.spool.statePath(e.id), 'utf8'));
    });
  });

  /**
   * Each message's state file as its first attempt left it, read as that attempt ends: read after the test got the
   * event, it could be the second attempt's already (a retry 0.25 s on, on a machine that descheduled the test that long).
   */
  const firstStates = new Map<string, string>();
  const stateAfterFirstAttempt = (id: string) => JSON.parse(firstStates.get(id)!);

  after(async () => {
    await s?.stop();
    await sink?.close();
  });

  const dsnTo = (rcpt: string) => sink.messages.filter((m) => m.from === '' && m.to[0] === rcpt);

  test('temporary failures are retried on the schedule (0.25 s, then 0.75 s repeating) until accepted', async () => {
    const id = await s.send('me@origin.test', ['later3@dest.test']);
    const first = await s.nextAttempt((e) => e.id === id, { past: true });
    assert.equal(first.outcomes[0]!.status, 'temporary');
    assert.equal(first.outcomes[0]!.reply, '451 4.2.0 Try again later');
    const state = stateAfterFirstAttempt(id);
    assert.equal(state.attempts, 1);
    assert.match(state.errors[0], /later3@dest\.test: 127\.0\.0\.1\[127\.0\.0\.1\]:\d+ said: 451 4\.2\.0 Try again later/);
    assert.equal(state.recipients[0].lastError, '451 4.2.0 Try again later');
    const done = await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    assert.equal(done.attempt, 4);
    const events = s.attempts.filter((e) => e.id === id);
    assert.deepEqual(events.map((e) => e.attempt), [1, 2, 3, 4]);
    // nextAttemptAt follows the schedule: +0.25 s after attempt 1, +0.75 s after 2 and 3 (the last step repeats).
    const ctxTimes = s.logs.filter((l) => String(l.msg).startsWith('CTX ') && String(l.msg).includes(id)).map((l) => Date.parse(String(l.time)));
    assert.equal(ctxTimes.length, 4);
    const gaps = ctxTimes.slice(1).map((t, i) => t - ctxTimes[i]!);
    assert.ok(gaps[0]! >= 240, `gap 1: ${gaps[0]} ms`); // never early; how late depends on the machine's load
    assert.ok(gaps[1]! >= 740 && gaps[2]! >= 740, `gaps 2, 3: ${gaps.join(', ')} ms`);
    assert.equal(sink.attempts.filter((a) => a.from === 'me@origin.test').length >= 4, true, 'the next hop saw every attempt');
    assert.equal(sink.messages.filter((m) => m.to.includes('later3@dest.test')).length, 1);
  });

  test('per-recipient results: a 5xx bounces that recipient only; the delivered one is not sent again', async () => {
    const id = await s.send('me@origin.test', ['ok@dest.test', 'bad@dest.test', 'later1@dest.test']);
    const first = await s.nextAttempt((e) => e.id === id, { past: true });
    const status = Object.fromEntries(first.outcomes.map((o) => [o.recipient, o.status]));
    assert.deepEqual(status, { 'ok@dest.test': 'delivered', 'bad@dest.test': 'permanent', 'later1@dest.test': 'temporary' });
    assert.ok(first.bounceId, 'a bounce for bad@');
    // Postfix's line, while the message itself stays queued for later1@.
    const notice = s.logs.filter((l) => l.id === id && l.bounce === first.bounceId && l.level === 30);
    assert.deepEqual(notice.map((l) => [l.msg, l.to]), [[`${id}: sender non-delivery notification: ${first.bounceId}`, ['bad@dest.test']]]);
    const state = stateAfterFirstAttempt(id);
    assert.deepEqual(state.recipients.map((r: { address: string; status?: string }) => [r.address, r.status ?? 'pending']),
      [['ok@dest.test', 'delivered'], ['bad@dest.test', 'bounced'], ['later1@dest.test', 'pending']]);
    await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    const copies = sink.messages.filter((m) => m.from === 'me@origin.test' && m.to.some((t) => ['ok@dest.test', 'later1@dest.test'].includes(t)));
    assert.deepEqual(copies.map((m) => m.to), [['ok@dest.test'], ['later1@dest.test']], 'the retry carried only the pending recipient');

    await sink.waitFor(sink.messages.length); // the bounce is delivered through the same route
    await until('the bounce to me@origin.test at the sink', () => dsnTo('me@origin.test').length > 0);
    const dsn = parseDsn(dsnTo('me@origin.test')[0]!.data);
    assert.equal(dsn.headers.from, 'Mail Delivery System <MAILER-DAEMON@postern.test>');
    assert.equal(dsn.headers['auto-submitted'], 'auto-replied');
    assert.equal(dsn.perMessage['x-postern-queue-id'], id);
    assert.equal(dsn.recipients.length, 1, 'only the refused recipient');
    const r = dsn.recipients[0]!;
    assert.equal(r['final-recipient'], 'rfc822; bad@dest.test');
    assert.equal(r.action, 'failed');
    assert.equal(r.status, '5.1.1');
    assert.equal(r['remote-mta'], 'dns; 127.0.0.1');
    assert.equal(r['diagnostic-code'], 'smtp; 550 5.1.1 <bad@dest.test>: Recipient address rejected: User unknown');
    assert.match(dsn.text, /<bad@dest\.test>: host 127\.0\.0\.1\[127\.0\.0\.1\]:\d+ said: 550 5\.1\.1/);
    assert.match(dsn.returnedHeader, /^Received: .*\r\n(.*\r\n)*Subject: test\r\n$/);
  });

  test('no bounce for the null sender or for NOTIFY=NEVER; NOTIFY=FAILURE still gets one', async () => {
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    const send = (from: string, rcpts: string[]): Promise<string> => sendWithParams(c, `<${from}>`, rcpts, 'Subject: n\r\n\r\nx\r\n');
    const nullSender = await send('', ['<bad-null@dest.test>']);
    const never = await send('never@origin.test', ['<bad-never@dest.test> NOTIFY=NEVER']);
    const failure = await send('failure@origin.test', ['<bad-failure@dest.test> NOTIFY=FAILURE,DELAY']);
    await c.quit();
    const events = await Promise.all([nullSender, never, failure].map((id) => s.nextAttempt((e) => e.id === id && e.removed, { past: true })));
    assert.deepEqual(events.map((e) => !!e.bounceId), [false, false, true]);
    assert.ok(s.logs.some((l) => l.msg === 'undeliverable bounce (null sender): discarded' && l.id === nullSender));
  });

  // NOTIFY=SUCCESS was kept with the recipient but never acted on: a sender who asked to be told of the delivery
  // heard nothing (RFC 3461 §6.2.3: the next hop is not asked for notifications, so the relay sends a "relayed" one).
  test('NOTIFY=SUCCESS gets a relayed notice once delivered; the default, FAILURE alone and NEVER get none', async () => {
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    const send = (from: string, rcpts: string[]): Promise<string> => sendWithParams(c, `<${from}>`, rcpts, 'Subject: tell me\r\n\r\nx\r\n');
    const asked = await send('asked@origin.test', ['<ok-success@dest.test> NOTIFY=SUCCESS,FAILURE', '<ok-plain@dest.test>', '<bad-success@dest.test> NOTIFY=SUCCESS']);
    const quiet = await send('quiet@origin.test', ['<ok-never@dest.test> NOTIFY=NEVER', '<ok-failure@dest.test> NOTIFY=FAILURE']);
    const fromNull = await send('', ['<ok-null@dest.test> NOTIFY=SUCCESS']);
    await c.quit();
    const events = await Promise.all([asked, quiet, fromNull].map((id) => s.nextAttempt((e) => e.id === id && e.removed, { past: true })));
    assert.deepEqual(events.map((e) => e.bounceId), [null, null, null], 'no failure notice: bad-success@ asked for successes only');
    await until('the success notice delivered', () => dsnTo('asked@origin.test').length === 1);
    const dsn = parseDsn(dsnTo('asked@origin.test')[0]!.data);
    assert.equal(dsn.headers['subject'], 'Successful Mail Delivery Report');
    assert.deepEqual(dsn.recipients.map((r) => [r['final-recipient'], r.action, r.status]), [['rfc822; ok-success@dest.test', 'relayed', '2.0.0']]);
    assert.match(dsn.recipients[0]!['diagnostic-code']!, /^smtp; 250 /);
    assert.match(dsn.returnedHeader, /^Subject: tell me\r\n/m);
    await s.scans(2);
    assert.equal(dsnTo('quiet@origin.test').length, 0);
    assert.equal(dsnTo('asked@origin.test').length, 1);
  });

  test('pre-delivery reject bounces at once with the script\'s reply; defer retries with the reason in previousErrors', async () => {
    const refused = await s.send('me@origin.test', ['x@refused.test']);
    const e = await s.nextAttempt((x) => x.id === refused, { past: true });
    assert.equal(e.removed, true);
    assert.deepEqual(e.outcomes.map((o) => [o.status, o.reply]), [['permanent', '554 5.7.1 Policy says no']]);
    // Settled without a transaction, yet logged like every delivery attempt, with the script that decided.
    const bounced = s.logs.filter((l) => l.id === refused && l.status);
    assert.deepEqual(bounced.map((l) => [l.status, l.relay, l.reason]), [['bounced', 'none', 'script predelivery: reject']]);
    assert.match(String(bounced[0]!.msg), new RegExp(`^${refused}: to=<x@refused\\.test>, relay=none, delay=[\\d.]+, attempt=1, tls=none, client_certificate=none, status=bounced \\(554 5\\.7\\.1 Policy says no\\)$`));
    await until('the bounce for the refused message at the sink', () => sink.messages.some((m) => m.from === '' && m.data.toString().includes(refused)));
    const dsn = parseDsn(sink.messages.find((m) => m.from === '' && m.data.toString().includes(refused))!.data);
    assert.equal(dsn.recipients[0]!.status, '5.7.1');
    assert.equal(dsn.recipients[0]!['diagnostic-code'], 'X-Postern; 554 5.7.1 Policy says no');
    assert.equal(dsn.recipients[0]!['remote-mta'], undefined);

    const held = await s.send('me@origin.test', ['y@held.test']);
    const done = await s.nextAttempt((x) => x.id === held && x.removed, { past: true });
    assert.equal(done.attempt, 3);
    const ctx = s.logs.filter((l) => String(l.msg).startsWith('CTX ') && String(l.msg).includes(held)).map((l) => JSON.parse(String(l.msg).slice(4)));
    assert.deepEqual(ctx.map((m) => m.attempt), [1, 2, 3]);
    assert.deepEqual(ctx[2].previousErrors, ['y@held.test: 451 4.3.0 Held for review', 'y@held.test: 451 4.3.0 Held for review']);
    assert.deepEqual(s.logs.filter((l) => l.id === held && l.status).map((l) => [l.attempt, l.status, l.reason ?? null, l.reply]), [
      [1, 'deferred', 'script predelivery: defer', '451 4.3.0 Held for review'],
      [2, 'deferred', 'script predelivery: defer', '451 4.3.0 Held for review'],
      [3, 'sent', null, s.logs.find((l) => l.id === held && l.status === 'sent')?.reply],
    ]);
  });

  test('a mail loop (50 Received headers, ours the 51st) is refused at the end of DATA, not accepted and bounced', async () => {
    // The queue's own check (more than 50 when it leaves) is reached only past the door: loop-count, in this file.
    const loop = Array.from({ length: 50 }, (_, i) => `Received: from hop${i}.example by hop${i + 1}.example; Mon, 1 Jan 2026 00:00:00 +0000\r\n`).join('');
    const before = s.attempts.length;
    await assert.rejects(s.send('me@origin.test', ['z@dest.test'], `${loop}Subject: loop\r\n\r\nx\r\n`), /not queued: 554 5\.4\.6 Error: too many hops/);
    const id = await s.send('me@origin.test', ['z2@dest.test'], 'Subject: after the loop\r\n\r\nx\r\n'); // a message after it
    await s.nextAttempt((x) => x.id === id && x.removed, { past: true });
    assert.deepEqual(s.attempts.slice(before).map((a) => a.id), [id], 'nothing of the loop was queued, and no bounce');
    assert.equal(sink.messages.filter((m) => m.to.includes('z@dest.test')).length, 0);
  });

  test('connections are reused between messages to the same next hop; a closed idle one is replaced', async () => {
    const before = sink.connections;
    for (let i = 0; i < 5; i++) {
      const id = await s.send('me@origin.test', [`reuse${i}@dest.test`]);
      await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    }
    const used = sink.connections - before;
    assert.ok(used <= 1, `five sequential messages, at most one new connection (${used})`);
    await sink.waitForClosed(sink.connections); // the pool closes (QUITs) an idle connection after 5 s
    const id = await s.send('me@origin.test', ['reuse-after@dest.test']);
    await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    assert.equal(sink.connections - before, used + 1);
  });
});

describe('retry-request-aside-kill', () => {
  // The queue runner removes a due request (`postern queue retry|release`) whose attempt it made by taking the file
  // aside (a rename to a temporary name) and looking at it there: a request written over it during the attempt is put
  // back. A queue process killed between the two left the request under the temporary name, which the next start's
  // scan removed as a leftover write: a `postern queue retry` made during the attempt was lost, and the message waited
  // for its retry time (an hour here, hours by default) for the attempt asked for.
  test('a due request left aside by a queue process killed while removing it is put back at the next start, and gets its attempt', { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-retry-aside-'));
    const dataDir = join(dir, 'data');
    const peer = await startScriptedPeer({});
    let s: DeliveryServer | null = null;
    try {
      const spool = new Spool(join(dataDir, 'spool'));
      await spool.init();
      const [id] = await spoolMessages(spool, ['someone@next.test'], { deferredUntil: new Date(Date.now() + 3600_000) });
      // What the killed process left: the request (one written during the attempt: not the one taken) under the name
      // clearDueRequest gave it, its pid that of a process gone.
      const gone = spawnSync(process.execPath, ['-e', '']).pid;
      assert.ok(gone > 0);
      await writeFile(join(spool.queueDir, `.${id}.due.${gone}.0123abcd.tmp`), `${new Date().toISOString()}\n`);
      spool.close();

      s = await startDeliveryServer({
        dataDir,
        config: configYaml({
          listeners: [testListener('in')],
          delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], scanIntervalMs: 200 },
        }),
        resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
      });
      await s.scans(3, 60_000);
      const server = s;
      assert.ok(server.attempts.some((e) => e.id === id) || (await server.spools.readDueRequest(id!)) !== null,
        'the request is back (or its attempt made), not removed as a temporary');
      const attempt = await server.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
      assert.equal(attempt.removed, true, 'the requested attempt made now, not an hour later');
    } finally {
      await s?.stop();
      peer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('retry-request-kept', () => {
  // `postern queue retry ID` writes a due request beside the message; the queue runner used to remove it at the scan
  // that scheduled the attempt. A queue process stopped or killed before that attempt was made (every delivery slot
  // busy, say) then forgot the request: the message waited for its recorded retry time, an hour here. The request now
  // stays on disk until the attempt it asked for has ended.
  test('a retry request stays until its attempt has been made: a stop before it does not lose it', { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-retry-kept-'));
    const dataDir = join(dir, 'data');
    // While `blocking`, the next hop never answers EHLO: the one delivery slot stays busy.
    let blocking = true;
    const held: net.Socket[] = [];
    const peer = await startScriptedPeer({ ehlo: (s) => { if (!blocking) return; held.push(s); return 'stop'; } });
    const start = (): Promise<DeliveryServer> => startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 1 },
      }),
      resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
    });
    let s: DeliveryServer | null = null;
    try {
      const spool = new Spool(join(dataDir, 'spool'));
      await spool.init();
      await spoolMessages(spool, ['first@next.test']); // due now: takes the slot
      const [retried] = await spoolMessages(spool, ['second@next.test'], { deferredUntil: new Date(Date.now() + 3600_000) });
      spool.close();

      s = await start();
      await until('the first message holds the delivery slot', () => held.length === 1, { timeoutMs: 60_000 });
      await retryMessages(s.spools, [retried!]);
      await s.scans(1, 60_000); // the request is taken: the message is due now, and waits for the slot
      assert.ok(!s.attempts.some((e) => e.id === retried), 'not attempted yet: the slot is busy');
      assert.notEqual(await s.spools.readDueRequest(retried!), null, 'the request is still on disk');
      await s.stop();
      s = null;

      blocking = false;
      for (const socket of held) socket.destroy();
      s = await start();
      const e = await s.nextAttempt((x) => x.id === retried, { timeoutMs: 60_000, past: true });
      assert.equal(e.removed, true, 'delivered at the next start, not an hour later');
      await until('the request removed with its attempt made', async () => (await s!.spools.readDueRequest(retried!)) === null);
    } finally {
      await s?.stop();
      peer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('state-shape', () => {
  // A state file that is valid JSON but not a delivery state (written by hand, a tool, or a disk that kept
  // another file's bytes) was taken as it was: `null` read as "no state yet", so every recipient was sent to
  // again, the ones already delivered included; `recipients` of another type threw inside each attempt, which
  // was retried at every retry step for ever. Such a state is now unreadable like one that is not JSON: the
  // message is held back and logged ("unreadable delivery state"), until `postern queue retry` restarts it.
  for (const [name, text] of [['null', 'null'], ['recipients of another type', '{"attempts":1,"nextAttemptAt":"2026-01-01T00:00:00.000Z","errors":[],"recipients":"x"}'], ['an array', '[]']] as const) {
    test(`a state file holding ${name}: held back as unreadable, the delivered recipient not sent to again`, async () => {
      const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address.startsWith('later@') ? { code: 451, text: '4.2.0 later' } : null) });
      const s = await startDeliveryServer({
        config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], scanIntervalMs: 200 }) }),
        scripts: { 'rcptto.ts': 'export default () => accept();' },
      });
      try {
        const id = await s.send('a@origin.test', ['ok@dest.test', 'later@dest.test']);
        const first = await s.nextAttempt((e) => e.id === id, { past: true });
        assert.deepEqual(first.outcomes.map((o) => o.status).sort(), ['delivered', 'temporary']);
        const spool = s.spools.home;
        await writeFile(spool.statePath(id), text);
        await spool.requestRescan(); // seen at the next scan: every 200 ms here, not the default 5 s
        await until('the state read again', () => s.logs.some((l) => l.id === id && /unreadable delivery state/.test(String(l.msg))) || s.attempts.filter((e) => e.id === id).length > 1
          || s.logs.some((l) => l.id === id && /delivery attempt failed/.test(String(l.msg))), { timeoutMs: 30_000 });
        assert.equal(sink.messages.filter((m) => m.to.includes('ok@dest.test')).length, 1, 'ok@ not sent to again');
        assert.ok(s.logs.some((l) => l.id === id && /unreadable delivery state/.test(String(l.msg))), 'logged as unreadable');
        assert.equal(s.attempts.filter((e) => e.id === id).length, 1, 'no further attempt');
      } finally {
        await s.stop();
        await sink.close();
      }
    });
  }
});

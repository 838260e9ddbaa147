// The store on a real Redis: connection slots, eviction policy, failover, refusals, a Unix socket, a hostile Redis
// and the store's operations. One file for what were several (one test process and one load of the engine instead of
// one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { rm } from 'node:fs/promises';
import { createClient } from 'redis';
import { STORE_KEYS, StoreUnavailable } from '../../engine/store/index.ts';
import { claimAccountGuess } from '../../engine/auth/account-failures.ts';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { loggedStore, loggedStore as loggedRedisStore } from '../helpers/logged-redis-store.ts';
import { until } from '../helpers/wait.ts';
import { registry, metrics } from '../../engine/metrics/metrics.ts';
import { needs } from '../helpers/example.ts';
import { freePort } from '../helpers/free-port.ts';
import { redisUrlHasPassword, redisUrlProblem } from '../../engine/store/redis-url.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { openTransaction } from '../helpers/smtp-client.ts';

describe('redis-store', () => {
  /**
   * The Redis store against a real redis-server: counts shared by two clients, every key with an expiry,
   * failures (down, hung) as rejections bounded by timeoutMs, no pile-up of commands while it hangs, and
   * recovery once Redis is back.
   */
  const opts = needsRedis();
  const quiet = createLogger('silent');
  let redis: TestRedis;

  before(async () => { if (!opts.skip) redis = await startRedis(); });
  after(async () => { await redis?.stop(); });

  const store = (keyPrefix = 'test:', timeoutMs = 500) => new RedisCounterStore({ url: redis.url, keyPrefix, timeoutMs }, quiet);
  /** A store's first calls fail until its connection is up (nothing is queued): wait for it. */
  async function ready(s: RedisCounterStore): Promise<RedisCounterStore> {
    await eventually(async () => (await s.get('probe'), true), 'store connected');
    return s;
  }

  test('two clients share one rate limit; denied calls are not counted', opts, async () => {
    const [a, b] = [await ready(store()), await ready(store())];
    try {
      const results = [];
      for (const s of [a, b, a, b, a]) results.push(await s.rate('r:shared', 3, 60));
      assert.deepEqual(results.map((r) => [r.allowed, r.count]), [[true, 1], [true, 2], [true, 3], [false, 3], [false, 3]]);
      for (const r of results) assert.ok(r.resetSeconds > 0 && r.resetSeconds <= 60, String(r.resetSeconds));
      // Another prefix is another namespace.
      const other = await ready(store('other:'));
      assert.equal((await other.rate('r:shared', 3, 60)).count, 1);
      await other.close();
      assert.equal(await a.add('c:shared', 5, 60), 5);
      assert.equal(await b.add('c:shared', -2, 60), 3);
      assert.equal(await a.get('c:shared'), 3);
      assert.equal(await b.get('c:absent'), 0);
      const failures = [a.authFailures(), b.authFailures()];
      const now = Date.now();
      assert.equal(await failures[0]!.add('192.0.2.1', now, now - 60_000), 1);
      assert.equal(await failures[1]!.add('192.0.2.1', now, now - 60_000), 2);
      assert.equal(await failures[0]!.count('192.0.2.1', Date.now() - 60_000), 2);
      // Only those inside the window, on Redis's clock: both are older than 10 ms once 50 ms have passed.
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(await failures[1]!.count('192.0.2.1', Date.now() - 10), 0);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('a rate window ends at most its length from now: one shortened by a reload, one whose key lost its expiry', opts, async () => {
    const s = await ready(store('window:'));
    const raw = createClient({ url: redis.url });
    await raw.connect();
    try {
      // messagesPerIdentity: { count: 1, windowSeconds: 2678400 } by mistake, then 3600: refused for an hour at most.
      assert.equal((await s.rate('shortened', 1, 2_678_400)).allowed, true);
      assert.equal((await s.rate('shortened', 1, 2_678_400)).resetSeconds, 2_678_400);
      const refused = await s.rate('shortened', 1, 3600);
      assert.deepEqual([refused.allowed, refused.resetSeconds], [false, 3600]);
      assert.ok(await raw.pTTL('window:shortened') <= 3600_000);
      // A key over its limit without an expiry (PERSIST, keys copied without their TTLs): refused calls set none
      // before, so the address or identity was refused for ever.
      assert.equal((await s.rate('persisted', 1, 60)).allowed, true);
      await raw.persist('window:persisted');
      const again = await s.rate('persisted', 1, 60);
      assert.deepEqual([again.allowed, again.resetSeconds], [false, 60]);
      const ttl = await raw.pTTL('window:persisted');
      assert.ok(ttl > 0 && ttl <= 60_000, String(ttl));
    } finally {
      await raw.quit();
      await s.close();
    }
  });

  test('every key the store writes expires; a window ends and counting starts again', opts, async () => {
    const s = await ready(store('expiry:'));
    const raw = createClient({ url: redis.url });
    await raw.connect();
    try {
      await s.rate('r', 1, 1);
      await s.add('c', 1, 100);
      await s.authFailures().add('198.51.100.7', Date.now(), Date.now() - 600_000);
      const keys = await raw.keys('expiry:*');
      assert.equal(keys.length, 3, keys.join(' '));
      for (const key of keys) {
        const ttl = await raw.pTTL(key);
        assert.ok(ttl > 0, `${key} has no expiry (${ttl})`);
      }
      // A second add keeps the first expiry (the ttl runs from the add that created the counter).
      const ttlBefore = await raw.pTTL('expiry:c');
      await s.add('c', 1, 100_000);
      assert.ok(await raw.pTTL('expiry:c') <= ttlBefore);
      assert.equal((await s.rate('r', 1, 1)).allowed, false);
      await eventually(async () => (await s.rate('r', 1, 1)).allowed, 'the 1 s window ended');
    } finally {
      await raw.close();
      await s.close();
    }
  });

  test('a password guess\'s place given back after its window ended does not make the next window one place larger', opts, async () => {
    const s = await ready(store('giveback:'));
    const raw = createClient({ url: redis.url });
    await raw.connect();
    try {
      const limit = { count: 2, windowMs: 60_000 };
      const right = await claimAccountGuess(s, limit, 'alice@example.com', '198.51.100.7');
      await raw.del(`giveback:${STORE_KEYS.accountAuthFailures('alice@example.com')}`); // its window ended meanwhile
      await right.settle(false);
      const next = [];
      for (let i = 0; i < 3; i++) next.push((await claimAccountGuess(s, limit, 'alice@example.com', '203.0.113.9')).deferred);
      assert.deepEqual(next, [false, false, true], 'the limit in the next window, not one guess more');
    } finally {
      await raw.close();
      await s.close();
    }
  });

  test('Redis down: calls reject at once with StoreUnavailable; back: calls work again', opts, async () => {
    const s = await ready(store('outage:'));
    try {
      assert.equal((await s.rate('r', 10, 60)).count, 1);
      await redis.stop();
      const err = await s.rate('r', 10, 60).then(() => null, (e: unknown) => e);
      assert.ok(err instanceof StoreUnavailable, String(err));
      assert.match(err.message, /^store unavailable \(redis\): /);
      await assert.rejects(s.get('c'), StoreUnavailable);
      await assert.rejects(s.authFailures().count('192.0.2.9', 0), StoreUnavailable);
      await redis.start();
      // Redis came back empty (no persistence): the script cache too; the store loads its scripts again on reconnect.
      await eventually(async () => (await s.rate('r', 10, 60)).count === 1, 'the store works again');
    } finally {
      await s.close();
    }
  });

  test('a hung Redis: each call rejects after timeoutMs instead of waiting', opts, async () => {
    const s = await ready(store('hung:', 200));
    redis.pause();
    try {
      const err = await s.rate('r', 10, 60).then(() => null, (e: unknown) => e);
      assert.ok(err instanceof StoreUnavailable, String(err));
      assert.match(err.message, /timeout|timed out/i);
    } finally {
      redis.resume();
      await s.close();
    }
  });

  test('a hung Redis under load: calls fail closed without piling up in the client; once it answers again it runs a bounded backlog, not every failed call', opts, async () => {
    const s = await ready(store('paused:', 50));
    redis.pause();
    let failed = 0;
    try {
      // 20,000 calls while it answers nothing: each kept memory in the client until the reply, and ran late.
      for (let round = 0; round < 10; round++) {
        await Promise.all(Array.from({ length: 2000 }, () => s.rate('k', 1_000_000, 600).catch((e: unknown) => {
          assert.ok(e instanceof StoreUnavailable, String(e));
          failed++;
        })));
      }
    } finally {
      redis.resume();
    }
    try {
      assert.equal(failed, 20_000, 'every call failed closed');
      // One connection answers in order: a call that succeeds comes after whatever was sent before it.
      await eventually(async () => (await s.rate('probe', 1_000_000, 600)).allowed, 'the store answers again');
      const ran = await s.get('k');
      assert.ok(ran <= 1000, `Redis ran ${ran} of the calls that had failed (at most the 1,000 sent and unanswered)`);
    } finally {
      await s.close();
    }
  });

  interface Link { client: net.Socket; silent: boolean }

  /**
   * A relay to the real Redis whose connections can go silent without closing: nothing passes either way, as
   * with a server hung at connect, a proxy holding connections with no backend, or a host gone without a reset.
   * `silent`: new connections start so. What each connection sends is read (and dropped), so its close is seen.
   */
  async function silentRelay(): Promise<{ url: string; silent: boolean; links: Set<Link>; close(): void }> {
    const links = new Set<Link>();
    const relay = { url: '', silent: false, links, close: () => { for (const l of links) l.client.destroy(); server.close(); } };
    const server = net.createServer((client) => {
      const upstream = net.connect(redis.port, '127.0.0.1');
      const link: Link = { client, silent: relay.silent };
      links.add(link);
      client.on('error', () => undefined);
      upstream.on('error', () => client.destroy());
      client.on('close', () => { upstream.destroy(); links.delete(link); });
      client.on('data', (d) => { if (!link.silent) upstream.write(d); });
      upstream.on('data', (d) => { if (!link.silent) client.write(d); });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    relay.url = `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    return relay;
  }

  test('a server that takes the connection and never answers its first commands: logged as an outage, and connected again until one answers', opts, async () => {
    // The client's connect timeout ends at the TCP connection: connected but never ready, it failed every call
    // without a log line or the unreachable gauge, and waited on that connection for good.
    const relay = await silentRelay();
    relay.silent = true;
    const { store: s, lines } = loggedStore(relay.url, 'handshake:', 200);
    const unreachable = async () => (await registry.getSingleMetric('postern_store_unreachable')!.get()).values[0]?.value;
    try {
      await until('the outage is logged', () => lines.some((l) => /store: Redis took the connection but did not answer/.test(l)));
      assert.equal(await unreachable(), 1);
      await assert.rejects(s.rate('r', 10, 60), StoreUnavailable);
      const held = [...relay.links];
      relay.silent = false;
      await eventually(async () => (await s.rate('r', 10, 60)).count === 1, 'answered on a new connection');
      assert.equal(await unreachable(), 0);
      await until('the silent connections are closed by the store', () => held.every((l) => !relay.links.has(l)));
    } finally {
      await s.close();
      relay.close();
    }
  });

  test('a connection that goes silent for good (its host gone without a reset): calls fail closed, and a new connection is made once it answers nothing for a second', opts, async () => {
    // The host powered off or partitioned away (a DNS name or virtual address then leads elsewhere): the client
    // kept its connection, each call timed out, and TCP took up to a quarter of an hour to give up.
    const relay = await silentRelay();
    const { store: s, lines } = loggedStore(relay.url, 'silent:', 100);
    try {
      await ready(s);
      const cutOff = [...relay.links];
      for (const link of cutOff) link.silent = true;
      // Under load: 1,000 calls sent and unanswered at once, the next ones fail without being sent, so no call
      // times out any more; the silence must still be noticed.
      const failures = await Promise.all(Array.from({ length: 1100 }, () => s.rate('r', 10, 60).then(() => null, (e: unknown) => e)));
      assert.ok(failures.every((e) => e instanceof StoreUnavailable), 'every call failed closed');
      // Calls keep failing closed until the store has given up on that connection and made another.
      await eventually(async () => (await s.rate('r', 10, 60)).allowed, 'answered on a new connection');
      assert.ok(cutOff.every((link) => !relay.links.has(link)), 'the silent connection was closed');
      assert.ok(lines.some((l) => /store: Redis answered nothing for a while/.test(l)), lines.join('\n'));
    } finally {
      await s.close();
      relay.close();
    }
  });

  test('each call is one round trip: one EVALSHA, no SCRIPT or EVAL per call, also the first after a Redis restart', opts, async () => {
    const s = await ready(store('trips:'));
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    /** Calls per command since the last CONFIG RESETSTAT (INFO commandstats). */
    const calls = async (): Promise<Record<string, number>> => Object.fromEntries(
      [...(await raw.info('commandstats')).matchAll(/^cmdstat_([\w|]+):calls=(\d+)/gm)].map((m) => [m[1]!, Number(m[2])]));
    try {
      await raw.configResetStat();
      for (let i = 0; i < 20; i++) await s.rate(`r${i % 3}`, 10, 60);
      await s.add('c', 1, 60);
      const after = await calls();
      assert.equal(after.evalsha, 21, JSON.stringify(after));
      assert.equal(after.eval, undefined, JSON.stringify(after));
      assert.equal(after.script, undefined, JSON.stringify(after));
      // Restarted empty (its script cache too): the client loads the scripts as it reconnects.
      await redis.stop();
      await redis.start();
      await raw.close().catch(() => undefined);
      await eventually(async () => (await s.get('probe'), true), 'the store reconnected');
      await raw.connect().catch(() => undefined);
      await raw.configResetStat();
      await s.rate('r0', 10, 60);
      const restarted = await calls();
      assert.equal(restarted.evalsha, 1, JSON.stringify(restarted));
      assert.equal(restarted.eval, undefined, JSON.stringify(restarted));
    } finally {
      await raw.close().catch(() => undefined);
      await s.close();
    }
  });

  test('the rate() calls of one turn go as one command (at most 100 each), each counted once, in order, as if alone', opts, async () => {
    const s = await ready(store('turn:'));
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await raw.configResetStat();
      // One key twice and over its limit within the turn, another with its own limit and window.
      const results = await Promise.all([s.rate('a', 2, 60), s.rate('b', 5, 30), s.rate('a', 2, 60), s.rate('a', 2, 60), s.rate('b', 5, 30)]);
      assert.deepEqual(results, [
        { allowed: true, count: 1, resetSeconds: 60 }, { allowed: true, count: 1, resetSeconds: 30 },
        { allowed: true, count: 2, resetSeconds: 60 }, { allowed: false, count: 2, resetSeconds: 60 },
        { allowed: true, count: 2, resetSeconds: 30 },
      ]);
      // 250 calls in one turn: three commands.
      const many = await Promise.all(Array.from({ length: 250 }, () => s.rate('m', 1000, 60)));
      assert.deepEqual(many.map((r) => r.count), Array.from({ length: 250 }, (_, i) => i + 1));
      const stats = Object.fromEntries([...(await raw.info('commandstats')).matchAll(/^cmdstat_([\w|]+):calls=(\d+)/gm)]
        .map((m) => [m[1]!, Number(m[2])]));
      assert.equal(stats.evalsha, 1 + 3, JSON.stringify(stats));
      assert.equal(await raw.get('turn:m'), '250');
      assert.ok(Number(await raw.pTTL('turn:b')) > 25_000, 'the window of b is its own (30 s)');
    } finally {
      await raw.close().catch(() => undefined);
      await s.close();
    }
  });

  test('a key Redis cannot count fails its own rate() call alone, not the others of its turn', opts, async () => {
    const s = await ready(store('onebad:'));
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      // Another program's values under the prefix: a string that is no number, and a list.
      await raw.set('onebad:text', 'hello');
      await raw.lPush('onebad:list', 'x');
      await raw.configResetStat();
      const results = await Promise.allSettled([s.rate('a', 5, 60), s.rate('text', 5, 60), s.rate('a', 5, 60), s.rate('list', 5, 60), s.rate('b', 5, 60)]);
      const stats = Object.fromEntries([...(await raw.info('commandstats')).matchAll(/^cmdstat_([\w|]+):calls=(\d+)/gm)]
        .map((m) => [m[1]!, Number(m[2])]));
      assert.equal(stats.evalsha, 1, `one command for the turn: ${JSON.stringify(stats)}`);
      assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled']);
      const value = (i: number) => (results[i] as PromiseFulfilledResult<unknown>).value;
      const reason = (i: number) => (results[i] as PromiseRejectedResult).reason as Error;
      assert.deepEqual([value(0), value(2), value(4)], [
        { allowed: true, count: 1, resetSeconds: 60 }, { allowed: true, count: 2, resetSeconds: 60 }, { allowed: true, count: 1, resetSeconds: 60 },
      ]);
      assert.ok(reason(1) instanceof StoreUnavailable && /^store unavailable \(redis\): .*not an integer/.test(reason(1).message), reason(1).message);
      assert.ok(reason(3) instanceof StoreUnavailable && /WRONGTYPE/.test(reason(3).message), reason(3).message);
      // Nothing written for the refused keys; the counted ones were, with their window.
      assert.equal(await raw.get('onebad:text'), 'hello');
      assert.equal(await raw.pTTL('onebad:text'), -1);
      assert.equal(await raw.get('onebad:a'), '2');
      assert.ok(Number(await raw.pTTL('onebad:a')) > 55_000);
    } finally {
      await raw.close().catch(() => undefined);
      await s.close();
    }
  });

  test('Redis gone while a turn\'s command is in flight: each of its calls fails closed at once (not at the time limit); back: counted again', opts, async () => {
    // A time limit no test reaches: the failures must come from the lost connection.
    const s = await ready(store('midbatch:', 60_000));
    try {
      assert.equal((await s.rate('k', 10, 60)).count, 1);
      redis.pause(); // the command is written, and not answered
      const calls = Promise.allSettled([s.rate('k', 10, 60), s.rate('j', 10, 60), s.get('c')]);
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
      await redis.stop();
      for (const c of await calls) {
        assert.equal(c.status, 'rejected');
        const e = (c as PromiseRejectedResult).reason as Error;
        assert.ok(e instanceof StoreUnavailable && !/timeout/.test(e.message), e.message);
      }
      await redis.start();
      // Redis came back empty: the failed calls left nothing, the next turn counts from 1.
      await eventually(async () => (await s.rate('k', 10, 60)).count === 1, 'the store works again');
      assert.equal((await s.rate('j', 10, 60)).count, 1);
    } finally {
      await s.close();
    }
  });

  test('a script Redis lost (SCRIPT FLUSH) is sent once by its text: the call still counts, exactly once', opts, async () => {
    const s = await ready(store('flushed:'));
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      assert.deepEqual(await s.rate('r', 10, 60), { allowed: true, count: 1, resetSeconds: 60 });
      await raw.scriptFlush();
      await raw.configResetStat();
      assert.deepEqual(await s.rate('r', 10, 60), { allowed: true, count: 2, resetSeconds: 60 });
      assert.equal(await s.add('c', 5, 60), 5);
      const stats = Object.fromEntries([...(await raw.info('commandstats')).matchAll(/^cmdstat_([\w|]+):calls=(\d+)/gm)]
        .map((m) => [m[1]!, Number(m[2])]));
      // Each: an EVALSHA answered NOSCRIPT (failed, so nothing ran), then one EVAL that ran the script.
      assert.equal(stats.evalsha, 2, JSON.stringify(stats));
      assert.equal(stats.eval, 2, JSON.stringify(stats));
      assert.equal(await raw.get('flushed:r'), '2', 'counted once per call on the server');
      assert.equal(await s.get('c'), 5);
    } finally {
      await raw.close().catch(() => undefined);
      await s.close();
    }
  });

  test('AUTH guesses: a place is claimed before the guess is decided; a right one gives it back, a wrong one is a failure; one claimed after its time limit is given back', opts, async () => {
    const s = await ready(store('guesses:', 200));
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    const failures = s.authFailures();
    const claim = (ip: string) => failures.claim!(ip, Date.now(), Date.now() - 600_000, 2);
    try {
      const [first, second] = [await claim('192.0.2.50'), await claim('192.0.2.50')];
      assert.deepEqual([first.granted, second.granted, first.failures], [true, true, 0]);
      const third = await claim('192.0.2.50');
      assert.deepEqual([third.granted, third.failures], [false, 0], 'both places below the limit are being decided');
      assert.equal(await first.settle(false), null);
      assert.equal(await second.settle(true), 1);
      assert.equal(await failures.count('192.0.2.50', Date.now() - 600_000), 1, 'the right guess is no failure');
      const fourth = await claim('192.0.2.50');
      assert.deepEqual([fourth.granted, fourth.failures], [true, 1]);
      assert.equal(await fourth.settle(true), 2);
      assert.deepEqual([(await claim('192.0.2.50')).granted], [false], 'the limit reached');

      // Redis hangs while a claim is written: it runs once Redis wakes, after the caller gave up on it.
      redis.pause();
      const late = claim('192.0.2.51');
      await assert.rejects(late, StoreUnavailable);
      redis.resume();
      await eventually(async () => await raw.zCard('guesses:limit:authguess:192.0.2.51') === 0 && await raw.exists('guesses:limit:authguess:192.0.2.51') === 0,
        'the place of the claim nobody waited for is given back');
      assert.equal(await failures.count('192.0.2.51', Date.now() - 600_000), 0);
    } finally {
      redis.resume();
      await raw.close().catch(() => undefined);
      await s.close();
    }
  });
});

describe('redis-connection-slots', () => {
  /**
   * Connection slots in Redis (limits.connectionsPerIpInStore) against a real redis-server: one limit over
   * two stores (two servers), slots given back, renewed past their lease time while held, expired when their
   * holder stops renewing (a dead server), counted again after Redis restarts empty, refused while it is down.
   */
  const opts = needsRedis();
  const quiet = createLogger('silent');
  let redis: TestRedis;

  before(async () => { if (!opts.skip) redis = await startRedis(); });
  after(async () => { await redis?.stop(); });

  // Renewed every third of it: long enough that a loaded machine's late renewal does not let a lease lapse.
  const LEASE_SECONDS = 3;
  const store = (keyPrefix: string) => new RedisCounterStore({ url: redis.url, keyPrefix, timeoutMs: 500, connectionLeaseSeconds: LEASE_SECONDS }, quiet);
  async function ready(s: RedisCounterStore): Promise<RedisCounterStore> {
    await eventually(async () => (await s.get('probe'), true), 'store connected');
    return s;
  }
  async function raw() {
    const client = createClient({ url: redis.url });
    await client.connect();
    return client;
  }
  /** Redis's own clock, in ms (the leases are scored on it). */
  async function redisNow(client: Awaited<ReturnType<typeof raw>>): Promise<number> {
    const [seconds, micros] = await client.sendCommand(['TIME']) as [string, string];
    return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
  }

  test('two stores share one limit per key; a slot given back is free for the other; giving back twice does nothing', opts, async () => {
    const [a, b] = [await ready(store('slots:')), await ready(store('slots:'))];
    try {
      const first = await a.connectionSlots.acquire('mx 192.0.2.1', 2);
      const second = await b.connectionSlots.acquire('mx 192.0.2.1', 2);
      assert.ok(first && second);
      assert.equal(await a.connectionSlots.acquire('mx 192.0.2.1', 2), null);
      assert.equal(await b.connectionSlots.acquire('mx 192.0.2.1', 2), null);
      // Another key (address or listener), another count.
      const other = await b.connectionSlots.acquire('mx 192.0.2.2', 2);
      assert.ok(other);
      first();
      first();
      // The release is one more command on a's connection: b's acquire may reach Redis before it.
      let third: (() => void) | null = null;
      await eventually(async () => (third = await b.connectionSlots.acquire('mx 192.0.2.1', 2)) !== null, 'the slot given back by a');
      assert.equal(await a.connectionSlots.acquire('mx 192.0.2.1', 2), null, 'one release frees one slot');
      assert.equal(b.connectionSlots.held, 3);
      second();
      third!();
      other();
      assert.equal(b.connectionSlots.held, 0);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('a held slot is renewed past its lease time; its key expires; close() gives back every slot', opts, async () => {
    const a = await ready(store('renew:'));
    const b = await ready(store('renew:'));
    const client = await raw();
    try {
      assert.ok(await a.connectionSlots.acquire('l 198.51.100.1', 1));
      const ttl = await client.pTTL('renew:l 198.51.100.1');
      assert.ok(ttl > 0 && ttl <= LEASE_SECONDS * 1000, `key expiry ${ttl}`);
      // Two lease times later it is still held: renewed.
      const until = await redisNow(client) + 2 * LEASE_SECONDS * 1000;
      await eventually(async () => await redisNow(client) > until, 'two lease times passed', 30_000);
      assert.equal(await b.connectionSlots.acquire('l 198.51.100.1', 1), null);
      await a.close();
      assert.ok(await b.connectionSlots.acquire('l 198.51.100.1', 1), 'given back at close');
    } finally {
      await client.close();
      await a.close();
      await b.close();
    }
  });

  test('a lease no one renews (its server died) expires: its slot is free again after the lease time', opts, async () => {
    const a = await ready(store('dead:'));
    const client = await raw();
    try {
      // What a server that died leaves behind: a lease with its last expiry, and nobody renewing it.
      await client.zAdd('dead:l 203.0.113.5', { score: await redisNow(client) + LEASE_SECONDS * 1000, value: 'gone-node:1' });
      assert.equal(await a.connectionSlots.acquire('l 203.0.113.5', 1), null);
      await eventually(async () => (await a.connectionSlots.acquire('l 203.0.113.5', 1)) !== null, 'the dead lease expired', 30_000);
      assert.deepEqual((await client.zRange('dead:l 203.0.113.5', 0, -1)).length, 1, 'the dead lease was dropped, ours added');
    } finally {
      await client.close();
      await a.close();
    }
  });

  test('Redis down: acquire rejects (StoreUnavailable); restarted empty: held slots are counted again at the next renewal', opts, async () => {
    const a = await ready(store('outage:'));
    const b = await ready(store('outage:'));
    try {
      assert.ok(await a.connectionSlots.acquire('l 192.0.2.77', 1));
      await redis.stop();
      await assert.rejects(b.connectionSlots.acquire('l 192.0.2.77', 1), StoreUnavailable);
      await redis.start();
      // Empty now; a's renewal adds its open connection's lease again, and b is refused from then on.
      await eventually(async () => {
        const taken = await b.connectionSlots.acquire('l 192.0.2.77', 1);
        taken?.();
        return taken === null;
      }, 'a\'s lease renewed into the new Redis');
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('redis-eviction-policy', () => {
  /**
   * The built-in limits' counts (auth failures, connection slots, messagesPerIdentity) live in the same Redis as
   * scripts' rate() and counter() keys, which clients can multiply (a key per sender address). Under an evicting
   * maxmemory-policy with maxmemory set, a flood of those keys made Redis drop the auth-failure counts too, and a
   * password guesser started again from zero, with nothing said. The store now reads Redis's eviction settings once
   * and warns when keys can be evicted; under noeviction (or without maxmemory) it says nothing.
   */
  const opts = needsRedis();
  let redis: TestRedis;
  before(async () => { if (!opts.skip) redis = await startRedis(); });
  after(async () => { await redis?.stop(); });

  const cli = async (...args: string[]): Promise<string> =>
    (await promisify(execFile)('redis-cli', ['-p', String(redis.port), ...args])).stdout.trim();

  const evictionWarnings = (lines: string[]): Array<Record<string, unknown>> =>
    lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => /store: Redis evicts keys when full/.test(String(l.msg)));

  /** A store connected and answering: its check's reply came before this call's (one connection, replies in order). */
  async function connectedStore(prefix: string): Promise<ReturnType<typeof loggedStore>> {
    const logged = loggedStore(redis.url, prefix, 2000);
    await eventually(async () => (await logged.store.rate('r', 100, 60)).allowed, 'store connected');
    return logged;
  }

  test('an evicting policy with maxmemory set is warned about once, naming the policy', opts, async () => {
    await cli('CONFIG', 'SET', 'maxmemory', '512mb');
    await cli('CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru');
    const { store, lines } = await connectedStore('evicting:');
    try {
      const warned = evictionWarnings(lines);
      assert.equal(warned.length, 1, lines.join('\n'));
      assert.equal(warned[0]!.maxmemoryPolicy, 'allkeys-lru');
      assert.equal(warned[0]!.maxmemory, 512 * 1024 * 1024);
      assert.equal(warned[0]!.level, 40, 'a warning');
      // A new connection (Redis restarted) does not say it again.
      await redis.stop();
      await redis.start();
      await cli('CONFIG', 'SET', 'maxmemory', '512mb');
      await cli('CONFIG', 'SET', 'maxmemory-policy', 'volatile-lru');
      await eventually(async () => (await store.rate('r2', 100, 60)).allowed, 'store connected again');
      assert.equal(evictionWarnings(lines).length, 1, 'once per process');
    } finally {
      await store.close();
    }
  });

  test('noeviction, or no maxmemory at all, is not warned about', opts, async () => {
    for (const [maxmemory, policy] of [['512mb', 'noeviction'], ['0', 'allkeys-lru']] as const) {
      await cli('CONFIG', 'SET', 'maxmemory', maxmemory);
      await cli('CONFIG', 'SET', 'maxmemory-policy', policy);
      const { store, lines } = await connectedStore(`quiet-${policy}:`);
      try {
        assert.deepEqual(evictionWarnings(lines), [], `${maxmemory} ${policy}`);
        assert.equal(lines.filter((l) => /"level":(40|50)/.test(l)).length, 0, lines.join('\n'));
      } finally {
        await store.close();
      }
    }
  });

  test('a Redis that refuses CONFIG (renamed, as managed services do) is no outage and no warning', opts, async () => {
    await cli('CONFIG', 'SET', 'maxmemory', '512mb');
    await cli('CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru');
    await cli('ACL', 'SETUSER', 'default', '-config');
    try {
      const { store, lines } = await connectedStore('no-config:');
      try {
        assert.deepEqual(evictionWarnings(lines), []);
        assert.equal(lines.filter((l) => /refuses commands|unreachable/.test(l)).length, 0, lines.join('\n'));
        assert.equal((await store.rate('r', 100, 60)).count, 2, 'calls go on');
      } finally {
        await store.close();
      }
    } finally {
      await cli('ACL', 'SETUSER', 'default', '+config');
    }
  });
});

describe('redis-failover', () => {
  /**
   * Redis fails over behind HAProxy (Debian's, `mode tcp`, sending connections to whichever server answers
   * `role:master`), as a Redis behind a proxy, a virtual address or a DNS name does (Sentinel, cloud Redis):
   * the replica is promoted, the old master demoted. The store's connection, made through HAProxy to the old
   * master, stays open to it: every write got READONLY, failed closed (AUTH 454, rate() 451) for good, and
   * the store did not even count as unreachable. Now a READONLY answer makes the store connect again, and it
   * reaches the new master without a restart; the outage is logged and in postern_store_unreachable.
   */
  const HAPROXY = '/usr/sbin/haproxy';
  const opts = needs('redis-server', HAPROXY);

  const cleanups: Array<() => Promise<void> | void> = [];
  after(async () => { for (const c of cleanups.reverse()) await c(); });

  async function redisCommand(server: TestRedis, ...args: string[]): Promise<unknown> {
    const client = createClient({ url: server.url });
    await client.connect();
    try {
      return await client.sendCommand(args);
    } finally {
      client.destroy();
    }
  }

  async function startHaproxy(servers: TestRedis[]): Promise<number> {
    const dir = mkdtempSync(join(tmpdir(), 'postern-redis-failover-'));
    const port = await freePort();
    writeFileSync(join(dir, 'haproxy.cfg'), `global
  maxconn 100
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout check 1s
frontend redis
  bind 127.0.0.1:${port}
  default_backend master
backend master
  option tcp-check
  tcp-check connect
  tcp-check send PING\\r\\n
  tcp-check expect string +PONG
  tcp-check send info\\ replication\\r\\n
  tcp-check expect string role:master
  tcp-check send QUIT\\r\\n
  tcp-check expect string +OK
${servers.map((s, i) => `  server r${i} 127.0.0.1:${s.port} check inter 100 fall 1 rise 1`).join('\n')}
`);
    const child: ChildProcess = spawn(HAPROXY, ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'ignore', 'pipe'] });
    cleanups.push(() => { child.kill('SIGTERM'); rmSync(dir, { recursive: true, force: true }); });
    return port;
  }

  test('after a failover behind a proxy, the store reaches the new master without a restart', { ...opts, timeout: 120_000 }, async () => {
    const a = await startRedis();
    const b = await startRedis();
    cleanups.push(() => a.stop(), () => b.stop());
    // Copies go over the socket, never through a file (a replica wrote dump.rdb to the test's working directory).
    for (const r of [a, b]) {
      await redisCommand(r, 'CONFIG', 'SET', 'repl-diskless-sync', 'yes', 'repl-diskless-sync-delay', '0', 'repl-diskless-load', 'swapdb');
    }
    await redisCommand(b, 'REPLICAOF', '127.0.0.1', String(a.port));
    const port = await startHaproxy([a, b]);

    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({ write(chunk: Buffer, _enc, done) { for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>); done(); } });
    const store = new RedisCounterStore({ url: `redis://127.0.0.1:${port}`, keyPrefix: 'failover:', timeoutMs: 1000 }, createLogger('info', sink));
    cleanups.push(() => store.close());
    await eventually(async () => (await store.add('c', 1, 600)) >= 1, 'the store counts through HAProxy', 30_000);
    await eventually(async () => (await redisCommand(b, 'GET', 'failover:c')) !== null, 'the replica has the counter', 30_000);

    // Failover: the replica promoted, the old master made a replica of it.
    await redisCommand(b, 'REPLICAOF', 'NO', 'ONE');
    await redisCommand(a, 'REPLICAOF', '127.0.0.1', String(b.port));

    const errors: string[] = [];
    let value = 0;
    await eventually(async () => {
      try {
        value = await store.add('c', 1, 600);
        return true;
      } catch (err) {
        errors.push((err as Error).message);
        return false;
      }
    }, 'a write that succeeds after the failover', 60_000);
    assert.ok(value >= 2, `counted on the new master, which had the old count (${value})`);
    assert.ok(errors.some((e) => /READONLY/.test(e)), `the old connection answered READONLY: ${errors.slice(0, 3).join(' | ')}`);
    assert.ok(lines.some((l) => l.level === 50 && /answers READONLY/.test(String(l.msg))), 'the outage is logged');
    assert.ok(lines.some((l) => /Redis reachable again/.test(String(l.msg))));
    assert.equal((await metrics.storeUnreachable.get()).values[0]?.value, 0, 'reachable again in the metric');
  });
});

describe('redis-refusals', () => {
  /**
   * A real Redis that is up and answering but refuses commands: memory full under `noeviction` (OOM), a
   * password it wants and was not given (NOAUTH). Every call fails closed, as before; what was missing is that
   * nothing said so: no error line, postern_store_unreachable at 0, so the documented alert never fired while
   * every AUTH got 454 and every MAIL FROM under messagesPerIdentity 451. Now each is an outage, logged once and
   * in the gauge, and its end is logged once a command of the refused kind goes through again, with no restart.
   * And a Redis that closes idle connections (`timeout`, as managed services often set) is no outage at all.
   */
  const opts = needsRedis();
  let redis: TestRedis;
  before(async () => { if (!opts.skip) redis = await startRedis(); });
  after(async () => { await redis?.stop(); });

  const cli = async (...args: string[]): Promise<string> =>
    (await promisify(execFile)('redis-cli', ['-p', String(redis.port), '--no-auth-warning', ...args])).stdout.trim();

  const unreachable = async (): Promise<number | undefined> => (await registry.getSingleMetric('postern_store_unreachable')!.get()).values[0]?.value;

  const loggedStore = (keyPrefix: string): ReturnType<typeof loggedRedisStore> => loggedRedisStore(redis.url, keyPrefix, 1000);

  const refusedLines = (lines: string[]): number => lines.filter((l) => l.includes('store: Redis refuses commands')).length;

  test('memory full (OOM under noeviction): calls fail closed, logged once as an outage and in the gauge; reads do not end it; room again: counted, and said so', opts, async () => {
    const { store, lines } = loggedStore('oom:');
    try {
      await eventually(async () => (await store.rate('r', 100, 60)).count === 1, 'store connected');
      await cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
      await cli('CONFIG', 'SET', 'maxmemory', '1');
      for (let i = 0; i < 3; i++) await assert.rejects(store.rate(`r${i}`, 100, 60), (err: Error) => err instanceof StoreUnavailable && /OOM/.test(err.message));
      await assert.rejects(store.add('c', 1, 60), StoreUnavailable);
      await until('the refusal logged', () => refusedLines(lines) === 1);
      assert.equal(await unreachable(), 1);
      // Reads still go through a full Redis: they do not end the outage (no line per read and per write).
      assert.equal(await store.get('c'), 0);
      await assert.rejects(store.rate('r', 100, 60), StoreUnavailable);
      assert.equal(await unreachable(), 1);
      assert.equal(refusedLines(lines), 1, 'one line per outage');
      assert.ok(!lines.some((l) => l.includes('accepts commands again')));

      await cli('CONFIG', 'SET', 'maxmemory', '0');
      assert.equal((await store.rate('r', 100, 60)).count, 2, 'counted again, without a restart');
      assert.equal(await unreachable(), 0);
      assert.equal(lines.filter((l) => l.includes('store: Redis accepts commands again')).length, 1);
    } finally {
      await cli('CONFIG', 'SET', 'maxmemory', '0');
      await store.close();
    }
  });

  test('a Redis that wants a password the URL does not give (NOAUTH): logged as an outage and in the gauge; the password dropped: counted again, and said so', opts, async () => {
    await cli('CONFIG', 'SET', 'requirepass', 'sesame');
    const { store, lines } = loggedStore('noauth:');
    try {
      await until('the refusal logged', () => refusedLines(lines) === 1);
      assert.match(lines.find((l) => l.includes('store: Redis refuses commands'))!, /NOAUTH/);
      assert.equal(await unreachable(), 1);
      await assert.rejects(store.rate('r', 100, 60), (err: Error) => err instanceof StoreUnavailable && /NOAUTH/.test(err.message));
      await assert.rejects(store.get('c'), StoreUnavailable);
      assert.equal(refusedLines(lines), 1, 'one line per outage');

      await cli('-a', 'sesame', 'CONFIG', 'SET', 'requirepass', '');
      // A read ends a refusal that read too: AUTH counts at connect are reads.
      assert.equal(await store.get('c'), 0);
      assert.equal(await unreachable(), 0);
      assert.equal((await store.rate('r', 100, 60)).count, 1);
      assert.equal(lines.filter((l) => l.includes('store: Redis accepts commands again')).length, 1);
    } finally {
      await cli('-a', 'sesame', 'CONFIG', 'SET', 'requirepass', '').catch(() => undefined);
      await store.close();
    }
  });

  test('an ACL that denies one command Postern uses (GET: counter().get()): an outage until it is allowed, one line however the other calls go', opts, async () => {
    await cli('ACL', 'SETUSER', 'postern', 'on', '>pw', '~*', '+@all', '-get');
    const { store, lines } = loggedRedisStore(`redis://postern:pw@127.0.0.1:${redis.port}`, 'acl:', 1000);
    try {
      await eventually(async () => (await store.rate('r', 100, 60)).count === 1, 'store connected');
      for (let i = 0; i < 3; i++) {
        await assert.rejects(store.get('c'), (err: Error) => err instanceof StoreUnavailable && /NOPERM/.test(err.message));
        assert.equal((await store.rate('r', 100, 60)).count, i + 2, 'writes go through');
        assert.equal(await unreachable(), 1);
      }
      assert.equal(refusedLines(lines), 1, 'one line, not one per read and write');
      assert.ok(!lines.some((l) => l.includes('accepts commands again')));
      await cli('ACL', 'SETUSER', 'postern', '+get');
      assert.equal(await store.get('c'), 0);
      assert.equal(await unreachable(), 0);
      assert.equal(lines.filter((l) => l.includes('store: Redis accepts commands again')).length, 1);
    } finally {
      await store.close();
      await cli('ACL', 'DELUSER', 'postern');
    }
  });

  test('an error about one key (a value that is no integer) is that call\'s alone: no outage', opts, async () => {
    const { store, lines } = loggedStore('onekey:');
    try {
      await eventually(async () => (await store.rate('r', 100, 60)).count === 1, 'store connected');
      await cli('SET', 'onekey:text', 'not a number');
      await assert.rejects(store.rate('text', 100, 60), StoreUnavailable);
      await assert.rejects(store.add('text', 1, 60), StoreUnavailable);
      assert.equal((await store.rate('r', 100, 60)).count, 2);
      assert.equal(refusedLines(lines), 0);
      assert.equal(await unreachable(), 0);
    } finally {
      await store.close();
    }
  });

  test('a Redis that closes idle connections (timeout 1 s): an idle store keeps its connection, no outage is logged, calls after the idle time count', opts, async () => {
    await cli('CONFIG', 'SET', 'timeout', '1');
    const { store, lines } = loggedStore('idle:');
    try {
      await eventually(async () => (await store.rate('r', 100, 60)).count === 1, 'store connected');
      for (let i = 2; i <= 3; i++) {
        // Idle well past Redis's timeout (the server checks idle clients about ten times a second).
        await new Promise((r) => setTimeout(r, 3000));
        assert.equal((await store.rate('r', 100, 60)).count, i);
      }
      assert.deepEqual(lines.filter((l) => /store: Redis (unreachable|reachable again)/.test(l)), [], 'no outage');
    } finally {
      await cli('CONFIG', 'SET', 'timeout', '0');
      await store.close();
    }
  });

  test('an idle store whose Redis hangs finds out by its PING, before any call meets the silence; answered again: reachable', opts, async () => {
    const { store, lines } = loggedStore('idle-hung:');
    try {
      await eventually(async () => (await store.rate('r', 100, 60)).count === 1, 'store connected');
      redis.pause();
      try {
        await until('the silence found with no call made', () => lines.some((l) => l.includes('store: Redis answered nothing for a while')), { timeoutMs: 30_000 });
        assert.equal(await unreachable(), 1);
      } finally {
        redis.resume();
      }
      await until('reachable again', () => lines.some((l) => l.includes('store: Redis reachable again')), { timeoutMs: 30_000 });
      assert.equal((await store.rate('r', 100, 60)).count, 2);
      assert.equal(await unreachable(), 0);
    } finally {
      await store.close();
    }
  });
});

describe('redis-unix-socket', () => {
  /**
   * `store.redis.url: unix:///path/to/redis.sock` (the same-host layout: cheaper per round trip than loopback TCP,
   * docs/benchmarks.md 2026-12-07): a store over the socket counts with one over TCP as one limit, takes its
   * database and password from `?db=` and `?password=`, fails closed when the password is wrong or the socket is
   * gone, and connects again when Redis is back; the configuration check refuses what the client could not use.
   */
  const opts = needsRedis();
  const PASSWORD = 'so&cket #pass+word';
  let redis: TestRedis;

  before(async () => { if (!opts.skip) redis = await startRedis({ password: PASSWORD }); });
  after(async () => { await redis?.stop(); });

  const connected = (s: RedisCounterStore): Promise<void> => eventually(async () => (await s.get('probe'), true), 'store connected');

  test('a store over the Unix socket and one over TCP count one limit; ?db= picks the database', opts, async () => {
    const overSocket = new RedisCounterStore({ url: redis.unixUrl, keyPrefix: 'unix:', timeoutMs: 1000 }, createLogger('silent'));
    const overTcp = new RedisCounterStore({ url: redis.url, keyPrefix: 'unix:', timeoutMs: 1000 }, createLogger('silent'));
    const db3 = new RedisCounterStore({ url: `${redis.unixUrl}&db=3`, keyPrefix: 'unix:', timeoutMs: 1000 }, createLogger('silent'));
    const raw = createClient({ url: redis.url });
    try {
      await Promise.all([connected(overSocket), connected(overTcp), connected(db3)]);
      const counts = [];
      for (const s of [overSocket, overTcp, overSocket, overTcp]) counts.push(await s.rate('shared', 3, 60));
      assert.deepEqual(counts.map((r) => [r.allowed, r.count]), [[true, 1], [true, 2], [true, 3], [false, 3]]);
      // Database 3 is its own namespace: the key counted there is not database 0's.
      assert.equal((await db3.rate('shared', 3, 60)).count, 1);
      await raw.connect();
      assert.equal(await raw.get('unix:shared'), '3');
      await raw.select(3);
      assert.equal(await raw.get('unix:shared'), '1');
      assert.ok(await raw.pTTL('unix:shared') > 0);
    } finally {
      await raw.close().catch(() => undefined);
      for (const s of [overSocket, overTcp, db3]) await s.close();
    }
  });

  test('over the Unix socket: a wrong password fails closed and is logged; Redis gone and back, the store follows', opts, async () => {
    const wrong = loggedStore(redis.unixUrl.replace(/\?password=.*/, '?password=wrong'), 'unix:', 500);
    const { store, lines } = loggedStore(redis.unixUrl, 'unix2:', 500);
    try {
      await assert.rejects(wrong.store.rate('k', 5, 60), StoreUnavailable);
      await eventually(async () => wrong.lines.some((l) => /Redis (refuses commands|unreachable)/.test(l)), 'the refusal logged');
      await connected(store);
      assert.equal((await store.rate('k', 5, 60)).count, 1);
      await redis.stop();
      await assert.rejects(store.rate('k', 5, 60), StoreUnavailable);
      await redis.start();
      await eventually(async () => (await store.rate('k', 5, 60)).count === 1, 'counting again on the new server (empty)');
      assert.ok(lines.some((l) => l.includes('store: Redis unreachable')), lines.join('\n'));
      assert.ok(lines.some((l) => l.includes('store: Redis reachable again')), lines.join('\n'));
    } finally {
      await wrong.store.close();
      await store.close();
    }
  });

  test('over the Unix socket too, a peer streaming an endless reply is cut off at the reply cap (no unbounded buffering)', async () => {
    const path = join(tmpdir(), `postern-endless-${process.pid}.sock`);
    await rm(path, { force: true });
    let streamed = 0;
    let closed = false;
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const peer = net.createServer((socket) => {
      socket.on('error', () => undefined);
      socket.on('close', () => { closed = true; });
      socket.once('data', () => {
        // Any first command (HELLO, CLIENT SETINFO) is answered with a bulk string that never ends.
        socket.write('$999999999\r\n');
        const pump = (): void => {
          while (!socket.destroyed && streamed < 64 * 1024 * 1024) {
            streamed += chunk.length;
            if (!socket.write(chunk)) return void socket.once('drain', pump);
          }
        };
        pump();
      });
    });
    await new Promise<void>((r) => peer.listen(path, r));
    const { store, lines } = loggedStore(`unix://${path}`, 'endless:', 500);
    try {
      await until('the store closes the connection', () => closed);
      assert.ok(streamed < 64 * 1024 * 1024, `streamed ${streamed} bytes before the close`);
      await assert.rejects(store.rate('k', 5, 60), StoreUnavailable);
      assert.ok(lines.some((l) => /Redis (sent a reply larger|took the connection|unreachable)/.test(l)), lines.join('\n'));
    } finally {
      await store.close();
      peer.close();
      await rm(path, { force: true });
    }
  });

  test('the configuration check takes unix:///path with db, password and username, and refuses what the client could not use', () => {
    assert.equal(redisUrlProblem('unix:///run/redis/redis-server.sock'), null);
    assert.equal(redisUrlProblem('unix:///run/redis/redis.sock?db=2&password=a%26b%23c&username=postern'), null);
    assert.match(redisUrlProblem('unix://localhost/run/redis.sock') ?? '', /unix:\/\/\/path/);
    assert.match(redisUrlProblem('unix:redis.sock') ?? '', /absolute path/);
    assert.equal(redisUrlProblem('unix:///run/redis.sock?database=2'), 'an unknown parameter (db=, password= and username= are known; & between them)');
    // A password written without its name is not repeated in the message.
    assert.doesNotMatch(redisUrlProblem('unix:///run/redis.sock?Secret-Pass-1') ?? '', /Secret/);
    assert.match(redisUrlProblem('unix:///run/redis.sock?db=1&db=2') ?? '', /given twice/);
    assert.match(redisUrlProblem('unix:///run/redis/') ?? '', /name the socket/);
    assert.match(redisUrlProblem('unix:///run/redis.sock?db=two') ?? '', /db= must be a database number/);
    assert.match(redisUrlProblem('unix:///run/redis.sock?password=a#b') ?? '', /%23/);
    assert.match(redisUrlProblem('tcp://127.0.0.1:6379') ?? '', /unix:\/\/\/path/);
    // A password in the query is a password: `postern check` warns when the file holding it is readable by all.
    assert.equal(redisUrlHasPassword('unix:///run/redis.sock?password=x'), true);
    assert.equal(redisUrlHasPassword('unix:///run/redis.sock?db=1'), false);
    assert.equal(redisUrlHasPassword('redis://:x@127.0.0.1'), true);
  });
});

describe('hostile-redis', () => {
  /**
   * A Redis that misbehaves while its connection stays up, over real SMTP: a peer on loopback that speaks
   * RESP answers rate() with `-OOM`, `-BUSY`, a byte that is no RESP type, an array of strings where the
   * script returns numbers, or nothing at all. Every one fails the hook closed (451), and once the peer
   * answers properly again (a silent one answering what it held), mail flows without a restart. The array of strings was handed to the script as
   * `{ allowed: false, count: 'x', resetSeconds: NaN }`: a script refusing over its limit refused for good
   * (550) on a reply that said nothing about the limit. Counters and AUTH failure counts read such replies
   * as NaN, which no limit is ever reached by: AUTH was never refused for failures.
   */
  type Mode = 'ok' | 'oom' | 'busy' | 'not-resp' | 'strings' | 'silent' | 'endless-bulk' | 'endless-array' | 'endless-at-connect';

  /** An endless reply is streamed until the connection closes, or this much is sent (the test then fails). */
  const STREAM_CAP = 64 * 1024 * 1024;

  /** What the peer streamed of its last endless reply, and how that ended. */
  interface Stream { bytes: number; ended: 'closed' | 'cap' | null; startRss: number; peakRss: number }

  /** Commands of the RESP protocol as clients send them: arrays of bulk strings. */
  function* commands(buf: { data: Buffer }): Generator<string[]> {
    for (;;) {
      const d = buf.data;
      if (d.length === 0 || d[0] !== 0x2a) return; // '*'
      let at = d.indexOf('\r\n');
      if (at < 0) return;
      const n = Number(d.subarray(1, at).toString());
      at += 2;
      const args: string[] = [];
      for (let i = 0; i < n; i++) {
        const nl = d.indexOf('\r\n', at);
        if (nl < 0) return;
        const len = Number(d.subarray(at + 1, nl).toString()); // '$<len>'
        if (d.length < nl + 2 + len + 2) return;
        args.push(d.subarray(nl + 2, nl + 2 + len).toString());
        at = nl + 2 + len + 2;
      }
      buf.data = d.subarray(at);
      yield args;
    }
  }

  /**
   * An endless reply on `s` (`$999999999` and bytes, or `*999999999` and integers), written as fast as the
   * socket takes it, until it closes or STREAM_CAP is sent. The process's RSS is sampled at each write.
   */
  function streamEndless(s: net.Socket, kind: 'bulk' | 'array', stream: Stream): void {
    const chunk = Buffer.alloc(64 * 1024, kind === 'bulk' ? 'x' : ':1\r\n');
    s.write(kind === 'bulk' ? '$999999999\r\n' : '*999999999\r\n');
    s.once('close', () => { stream.ended ??= 'closed'; });
    const pump = (): void => {
      while (!s.destroyed) {
        stream.peakRss = Math.max(stream.peakRss, process.memoryUsage.rss());
        if (stream.bytes >= STREAM_CAP) { stream.ended = 'cap'; return; }
        stream.bytes += chunk.length;
        if (!s.write(chunk)) { s.once('drain', pump); return; }
      }
    };
    pump();
  }

  /**
   * A RESP peer whose answers to scripts (rate()) and GET follow `mode`; everything else is answered plainly. A silent
   * peer answers what it held back once its mode changes, in order, as a paused Redis does when it wakes.
   */
  async function startFakeRedis(): Promise<{ url: string; mode: Mode; scripts: number; commands: number; connections: number; stream: Stream; close(): void }> {
    const state = { mode: 'ok' as Mode, scripts: 0, commands: 0, connections: 0, stream: { bytes: 0, ended: null, startRss: 0, peakRss: 0 } as Stream };
    const sockets = new Set<net.Socket>();
    const held: Array<() => void> = [];
    const answer = (calls: number): string => `*${3 * calls}\r\n${':1\r\n:1\r\n:60000\r\n'.repeat(calls)}`;
    const server = net.createServer((s) => {
      state.connections++;
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
      const buf = { data: Buffer.alloc(0) };
      s.on('data', (chunk) => {
        buf.data = Buffer.concat([buf.data, chunk]);
        if (state.mode === 'endless-at-connect') { // the client's first commands (CLIENT SETINFO) get no answer but this
          s.removeAllListeners('data');
          streamEndless(s, 'bulk', state.stream = { bytes: 0, ended: null, startRss: 0, peakRss: 0 });
          return;
        }
        for (const args of commands(buf)) {
          const name = args[0]!.toUpperCase();
          if (name === 'SCRIPT') { s.write(`$40\r\n${'0'.repeat(40)}\r\n`); continue; }
          if (name === 'GET' || name === 'ZCOUNT') state.commands++;
          if ((name === 'GET' || name === 'EVALSHA') && state.mode.startsWith('endless-')) {
            state.commands++;
            if (name === 'EVALSHA') state.scripts++;
            state.stream = { bytes: 0, ended: null, startRss: process.memoryUsage.rss(), peakRss: 0 };
            streamEndless(s, state.mode === 'endless-bulk' ? 'bulk' : 'array', state.stream);
            return;
          }
          if (name !== 'EVALSHA' && name !== 'EVAL') { s.write(state.mode === 'strings' ? '$1\r\nx\r\n' : name === 'GET' ? '$-1\r\n' : name === 'ZCOUNT' ? ':0\r\n' : '+OK\r\n'); continue; }
          state.commands++;
          state.scripts++;
          const calls = Number(args[2]);
          switch (state.mode) {
            case 'ok': s.write(answer(calls)); break;
            case 'oom': s.write('-OOM command not allowed when used memory > \'maxmemory\'.\r\n'); break;
            case 'busy': s.write('-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.\r\n'); break;
            case 'not-resp': s.write('?what\r\n'); break;
            case 'strings': s.write(`*${3 * calls}\r\n${'$1\r\nx\r\n'.repeat(3 * calls)}`); break;
            case 'silent': held.push(() => s.write(answer(calls))); break; // a paused server: answered once it wakes
          }
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return {
      url: `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
      get mode() { return state.mode; },
      set mode(m: Mode) {
        state.mode = m;
        if (m !== 'silent') for (const reply of held.splice(0)) reply();
      },
      get scripts() { return state.scripts; },
      get commands() { return state.commands; },
      get connections() { return state.connections; },
      get stream() { return state.stream; },
      close() { for (const s of sockets) s.destroy(); server.close(); },
    };
  }

  const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';

  let redis: Awaited<ReturnType<typeof startFakeRedis>>;
  let server: TestServer;
  before(async () => {
    redis = await startFakeRedis();
    server = await startTestServer({
      config: `
localDomains: [example.com]
store:
  redis: { url: "${redis.url}", keyPrefix: "hostile:", timeoutMs: 500 }
sandbox: { timeoutMs: 3000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`,
      scripts: {
        'rcptto.ts': `export default async function (ctx) {
  const r = await rate('rcpt:' + ctx.address.localPart, 100, 60);
  if (!r.allowed) return reject('over the limit');
}`,
      },
    });
  });
  after(async () => {
    await server?.stop();
    redis?.close();
  });

  async function rcpt(): Promise<string> {
    const c = await openTransaction(server.port('mx'));
    try {
      return (await c.command('RCPT TO:<user@example.com>')).text;
    } finally {
      await c.quit();
    }
  }

  test('rate() against a Redis that answers errors, garbage or nothing fails closed with 451; served again once it answers properly', async () => {
    redis.mode = 'ok';
    await until('the store connected and answering', async () => (await rcpt()).startsWith('250'), { timeoutMs: 30_000 });
    for (const mode of ['oom', 'busy', 'not-resp', 'strings', 'silent', 'endless-bulk', 'endless-array'] as const) {
      redis.mode = mode;
      const before = redis.scripts;
      const reply = await rcpt();
      assert.equal(reply, FAIL_CLOSED, `${mode}: fails closed`);
      if (mode !== 'not-resp') assert.ok(redis.scripts > before, `${mode}: the call reached the peer`);
      redis.mode = 'ok';
      // A client that read garbage drops its connection and reconnects: calls fail closed until it is back.
      await until(`${mode}: served again`, async () => (await rcpt()).startsWith('250'), { timeoutMs: 30_000 });
    }
  });

  test('counter values and AUTH failure counts from a Redis that answers strings fail closed instead of reading as NaN', async () => {
    redis.mode = 'ok';
    const store = new RedisCounterStore({ url: redis.url, keyPrefix: 'direct:', timeoutMs: 500 }, createLogger('silent'));
    try {
      // Until its connection is up every call fails at once: wait for one that reaches the peer and is answered.
      await until('the store connected', async () => (await store.get('probe').then(() => true, () => false)), { timeoutMs: 30_000 });
      redis.mode = 'strings';
      const failures = store.authFailures();
      const now = Date.now();
      for (const [what, call] of [
        ['get', () => store.get('c')],
        ['add', () => store.add('c', 1, 60)],
        ['authFailures.add', () => failures.add('192.0.2.1', now, now - 60_000)],
        ['authFailures.count', () => failures.count('192.0.2.1', now - 60_000)],
      ] as const) {
        const before = redis.commands;
        await assert.rejects(call(), (err) => err instanceof StoreUnavailable && /unexpected reply/.test(err.message), `${what}: fails closed`);
        assert.ok(redis.commands > before, `${what}: answered by the peer`);
      }
    } finally {
      redis.mode = 'ok';
      await store.close();
    }
  });

  test('a peer streaming an endless reply (a bulk string, an array) is cut after 1 MiB: the call fails closed, one outage line, memory flat, served again after', async () => {
    // A time limit of a minute: the silence check (5 s or timeoutMs) must not be what cuts the stream. The client
    // buffered the reply whole: 2 GB of RSS in 7 s for a bulk string, 1.3 GB for 64 MiB of an array.
    const { store, lines } = loggedStore(redis.url, 'endless:', 60_000);
    try {
      redis.mode = 'ok';
      await until('the store connected', async () => (await store.get('probe').then(() => true, () => false)), { timeoutMs: 30_000 });
      // A byte that is no RESP type: the client drops the connection and makes a new one itself (its
      // 'reconnecting'), which must be watched as the first was.
      redis.mode = 'not-resp';
      await assert.rejects(store.rate('r', 100, 60), StoreUnavailable);
      redis.mode = 'ok';
      await until('served again', async () => (await store.get('c').then((v) => v === 0, () => false)), { timeoutMs: 30_000 });
      for (const mode of ['endless-bulk', 'endless-array'] as const) {
        redis.mode = mode;
        const before = redis.commands;
        const outages = lines.filter((l) => l.includes('store: Redis sent a reply larger')).length;
        const call = store.get('c');
        call.catch(() => undefined);
        await until(`${mode}: the stream ended`, () => redis.commands > before && redis.stream.ended !== null, { timeoutMs: 60_000 });
        const { bytes, ended, startRss, peakRss } = redis.stream;
        const grew = Math.round((peakRss - startRss) / 1048576);
        assert.equal(ended, 'closed', `${mode}: the connection was cut (the peer sent ${bytes} bytes; RSS grew ${grew} MiB)`);
        await assert.rejects(call, StoreUnavailable, `${mode}: fails closed`);
        // 1 MiB read, the rest in the two kernel socket buffers.
        assert.ok(bytes < 32 * 1024 * 1024, `${mode}: cut after ${bytes} bytes`);
        assert.equal(lines.filter((l) => l.includes('store: Redis sent a reply larger')).length, outages + 1, `${mode}: one outage line`);
        redis.mode = 'ok';
        await until(`${mode}: served again`, async () => (await store.get('c').then((v) => v === 0, () => false)), { timeoutMs: 30_000 });
      }
    } finally {
      redis.mode = 'ok';
      await store.close();
    }
  });

  test('a peer streaming without end at every new connection is connected to with a growing delay, not in a loop', async () => {
    // Cut at 1 MiB, each connection was replaced by a new one at once: about 100 connections a second, each
    // reading 1 MiB (a third of a core). The client's own delay between attempts (50 ms doubling to 2 s) now
    // applies: 7 connections take at least 50 + 100 + 200 + 400 + 800 + 1600 ms (a lower bound: load only adds).
    const peer = await startFakeRedis();
    peer.mode = 'endless-at-connect';
    const { store, lines } = loggedStore(peer.url, 'loop:', 500);
    const start = performance.now();
    try {
      await until('the first stream', () => peer.stream.bytes > 0, { timeoutMs: 30_000 });
      const first = peer.stream;
      await until('7 connections', () => peer.connections >= 7, { timeoutMs: 60_000 });
      // Cut during the client's first commands too (the 5 s wait for their answers let it stream on till then).
      assert.equal(first.ended, 'closed');
      assert.ok(first.bytes < 32 * 1024 * 1024, `cut after ${first.bytes} bytes`);
      const took = performance.now() - start;
      assert.ok(took >= 2000, `7 connections in ${Math.round(took)} ms`);
      assert.equal(lines.filter((l) => l.includes('store: Redis sent a reply larger')).length, 1, 'one outage line');
      await assert.rejects(store.get('c'), StoreUnavailable);
    } finally {
      await store.close();
      peer.close();
    }
  });
});

/**
 * The Redis store against a real redis-server: counts shared by two clients, every key with an expiry,
 * failures (down, hung) as rejections bounded by timeoutMs, no pile-up of commands while it hangs, and
 * recovery once Redis is back.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createClient } from 'redis';
import { STORE_KEYS, StoreUnavailable } from '../../engine/store/index.ts';
import { claimAccountGuess } from '../../engine/auth/account-failures.ts';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { loggedStore } from '../helpers/logged-redis-store.ts';
import { until } from '../helpers/wait.ts';
import { registry } from '../../engine/metrics/metrics.ts';

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

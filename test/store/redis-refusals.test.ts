/**
 * A real Redis that is up and answering but refuses commands: memory full under `noeviction` (OOM), a
 * password it wants and was not given (NOAUTH). Every call fails closed, as before; what was missing is that
 * nothing said so: no error line, postern_store_unreachable at 0, so the documented alert never fired while
 * every AUTH got 454 and every MAIL FROM under messagesPerIdentity 451. Now each is an outage, logged once and
 * in the gauge, and its end is logged once a command of the refused kind goes through again, with no restart.
 * And a Redis that closes idle connections (`timeout`, as managed services often set) is no outage at all.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { StoreUnavailable } from '../../engine/store/index.ts';
import { registry } from '../../engine/metrics/metrics.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { loggedStore as loggedRedisStore } from '../helpers/logged-redis-store.ts';
import { until } from '../helpers/wait.ts';

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

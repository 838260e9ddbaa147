/**
 * The built-in limits' counts (auth failures, connection slots, messagesPerIdentity) live in the same Redis as
 * scripts' rate() and counter() keys, which clients can multiply (a key per sender address). Under an evicting
 * maxmemory-policy with maxmemory set, a flood of those keys made Redis drop the auth-failure counts too, and a
 * password guesser started again from zero, with nothing said. The store now reads Redis's eviction settings once
 * and warns when keys can be evicted; under noeviction (or without maxmemory) it says nothing.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { loggedStore } from '../helpers/logged-redis-store.ts';

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

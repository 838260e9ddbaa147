/**
 * Connection slots in Redis (limits.connectionsPerIpInStore) against a real redis-server: one limit over
 * two stores (two servers), slots given back, renewed past their lease time while held, expired when their
 * holder stops renewing (a dead server), counted again after Redis restarts empty, refused while it is down.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from 'redis';
import { StoreUnavailable } from '../../engine/store/index.ts';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';

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

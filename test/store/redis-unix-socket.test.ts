/**
 * `store.redis.url: unix:///path/to/redis.sock` (the same-host layout: cheaper per round trip than loopback TCP,
 * docs/benchmarks.md 2026-12-07): a store over the socket counts with one over TCP as one limit, takes its
 * database and password from `?db=` and `?password=`, fails closed when the password is wrong or the socket is
 * gone, and connects again when Redis is back; the configuration check refuses what the client could not use.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from 'redis';
import { StoreUnavailable } from '../../engine/store/index.ts';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';
import { redisUrlHasPassword, redisUrlProblem } from '../../engine/store/redis-url.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { loggedStore } from '../helpers/logged-redis-store.ts';
import { until } from '../helpers/wait.ts';

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

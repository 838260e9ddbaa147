/**
 * Redis fails over behind HAProxy (Debian's, `mode tcp`, sending connections to whichever server answers
 * `role:master`), as a Redis behind a proxy, a virtual address or a DNS name does (Sentinel, cloud Redis):
 * the replica is promoted, the old master demoted. The store's connection, made through HAProxy to the old
 * master, stays open to it: every write got READONLY, failed closed (AUTH 454, rate() 451) for good, and
 * the store did not even count as unreachable. Now a READONLY answer makes the store connect again, and it
 * reaches the new master without a restart; the outage is logged and in postern_store_unreachable.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createClient } from 'redis';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { metrics } from '../../engine/metrics/metrics.ts';
import { needs } from '../helpers/example.ts';
import { freePort } from '../helpers/free-port.ts';
import { eventually, startRedis, type TestRedis } from '../helpers/redis-server.ts';

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

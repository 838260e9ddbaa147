/**
 * The queue process's connection pool over a long run: one entry per next hop (with its TLS settings) that has
 * connections now, none for one whose connections are all gone. Taking a destination's last idle connection
 * left its empty list in the pool for good, so every next hop that was ever reused stayed (a queue that sends
 * by MX meets as many hosts as recipient domains name: whoever controls a domain's DNS names new ones), and
 * each new connection at a destination's limit walked them all (makeRoom).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConnectionPool, type Endpoint } from '../../engine/delivery/connection-pool.ts';
import type { ConnectionSecurity } from '../../engine/delivery/outbound-tls.ts';
import { startRawSink } from '../helpers/raw-sink.ts';

const PLAIN: ConnectionSecurity = { secure: false, ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {}, mode: 'none', key: 'none' };
const OPTS = { heloName: 'postern.test', connectTimeoutMs: 10_000, commandTimeoutMs: 10_000 };
const HOSTS = 2_000;

test(`${HOSTS} next hops each used twice (the second time from the pool), then gone: the pool keeps nothing of them`, { timeout: 600_000 }, async () => {
  const sink = await startRawSink(); // greets at once
  const pool = new ConnectionPool();
  try {
    let next = 0;
    // As a transaction does: open, release for reuse, the next transaction takes it from the pool, and its
    // release closes it (its message count reached, or the next hop said something that ends reuse).
    const oneHost = async (i: number): Promise<void> => {
      const endpoint: Endpoint = { host: `mx${i}.hostile.test`, address: '127.0.0.1', port: sink.port, security: PLAIN };
      pool.release(await pool.open(endpoint, OPTS), true);
      const again = pool.takeIdle(`${endpoint.host}:${endpoint.port}|${PLAIN.key}`);
      assert.ok(again, 'the second use takes the pooled connection');
      pool.release(again, false);
    };
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < HOSTS) await oneHost(next++);
    }));
    assert.equal(pool.idleCount, 0);
    assert.deepEqual(pool.destinationsHeld, { idle: 0, open: 0 }, 'no next hop without a connection is kept');
  } finally {
    pool.close();
    await sink.close();
  }
});

/**
 * A process that gets the CPU back late (descheduled on a loaded machine, or its event loop held by other work: a
 * crowd of TLS handshakes, a large message parsed) runs its timers before it reads its sockets. The store's deadline
 * timer then failed every call in flight — `no answer within timeoutMs` — although Redis had answered within a
 * millisecond and its answer was waiting in the socket: a 451 (rate(), counters) or 454 (AUTH) to clients on every
 * such lag, an outage that never was. The deadline is now judged after the socket was read.
 *
 * Real Redis, a real client; the lag is made by holding this process's own event loop right after the command is
 * written, for several times the time limit (Redis answers meanwhile).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { needsRedis, startRedis, eventually, type TestRedis } from '../helpers/redis-server.ts';
import { loggedStore } from '../helpers/logged-redis-store.ts';

const opts = needsRedis();
const TIMEOUT_MS = 100;
let redis: TestRedis | undefined;

before(async () => { if (!opts.skip) redis = await startRedis(); });
after(async () => { await redis?.stop(); });

/** Holds the event loop for `ms`, from a check-phase callback queued now: after the client's write (queued first). */
function holdEventLoopAfterWrites(ms: number): Promise<void> {
  return new Promise((resolve) => setImmediate(() => {
    const end = performance.now() + ms;
    while (performance.now() < end) { /* the process has the CPU, its event loop does not */ }
    resolve();
  }));
}

test('answers that came in time but were read after a late deadline timer are taken, not failed as timeouts', opts, async () => {
  const { store, lines } = loggedStore(redis!.url, 'late-loop:', TIMEOUT_MS);
  try {
    await eventually(async () => (await store.rate('r', 1000, 60)).count === 1, 'store connected');
    for (let i = 2; i <= 4; i++) {
      const counted = store.rate('r', 1000, 60).then((r) => r.count, (e: Error) => e.message);
      const read = store.get('r').then((n) => (n >= i - 1 ? 'read' : n), (e: Error) => e.message); // before or after the count
      await holdEventLoopAfterWrites(10 * TIMEOUT_MS);
      assert.deepEqual([await counted, await read], [i, 'read'], `round ${i}`);
    }
    assert.deepEqual(lines.filter((l) => /store: Redis (unreachable|answered nothing)/.test(l)), [], 'no outage said');
  } finally {
    await store.close();
  }
});

test('a Redis that really answers nothing still fails the call at its deadline', opts, async () => {
  const { store } = loggedStore(redis!.url, 'late-loop-hung:', TIMEOUT_MS);
  try {
    await eventually(async () => (await store.rate('r', 1000, 60)).count === 1, 'store connected');
    redis!.pause();
    try {
      await assert.rejects(store.rate('r', 1000, 60), /no answer within 100 ms \(timeout\)/);
    } finally {
      redis!.resume();
    }
  } finally {
    await store.close();
  }
});

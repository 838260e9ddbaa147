/**
 * A view of a store with every key under a prefix of its own: shadow scripts count in it, so that their
 * rate() and counter() calls never touch the live scripts' counts (engine/shadow/). Closing the view does
 * not close the store (its owner does).
 */
import type { CounterStore, ImmediateCounterStore } from './counter-store.ts';

export function prefixedStore(store: CounterStore, prefix: string): CounterStore {
  const now = store.immediate;
  const immediate: ImmediateCounterStore | undefined = now && {
    rateNow: (key, limit, windowSeconds) => now.rateNow(prefix + key, limit, windowSeconds),
    getNow: (key) => now.getNow(prefix + key),
    addNow: (key, n, ttlSeconds) => now.addNow(prefix + key, n, ttlSeconds),
  };
  return {
    kind: store.kind,
    immediate,
    rate: (key, limit, windowSeconds) => store.rate(prefix + key, limit, windowSeconds),
    get: (key) => store.get(prefix + key),
    add: (key, n, ttlSeconds) => store.add(prefix + key, n, ttlSeconds),
    authFailures: () => store.authFailures(),
    connectionSlots: store.connectionSlots && { acquire: (key, limit) => store.connectionSlots!.acquire(prefix + key, limit) },
    close: () => Promise.resolve(),
  };
}

/**
 * The counter store a configuration names (`store:`), made once per server process. The Redis client
 * (some 400 modules) is loaded only when `store.redis` asks for it: import RedisCounterStore from
 * ./redis-store.ts directly where it is wanted.
 */
import type { Config } from '../config/schema.ts';
import type { Logger } from '../logging/logger.ts';
import type { CounterStore } from './counter-store.ts';
import { MemoryCounterStore } from './memory-store.ts';

export type { CounterStore, RateResult } from './counter-store.ts';
export { STORE_KEYS, StoreUnavailable } from './counter-store.ts';
export { MemoryCounterStore } from './memory-store.ts';
export { prefixedStore } from './prefixed-store.ts';
export { guessPlaces } from './guess-places.ts';

/** `sayEviction` false: another process of the server says whether Redis evicts keys (a worker of postern serve). */
export async function createStore(config: Config['store'], logger: Logger, opts: { sayEviction?: boolean } = {}): Promise<CounterStore> {
  if (config.redis) {
    const { RedisCounterStore } = await import('./redis-store.ts');
    return new RedisCounterStore(config.redis, logger, opts);
  }
  return createMemoryStore(config, logger);
}

/** The in-memory store, bounded by `store.maxKeys`; the keys it drops are logged as a warning. */
export function createMemoryStore(config: Config['store'], logger: Logger): MemoryCounterStore {
  return new MemoryCounterStore(undefined, {
    maxKeys: config.maxKeys,
    onEvict: (dropped, maxKeys, refusingDropped) => logger.warn({ dropped, maxKeys, refusingDropped },
      `store: more than ${maxKeys} keys in memory; dropped the ${dropped} created longest ago${refusingDropped ? `, ${refusingDropped} of them at their limit (every key was)` : ' that were not at their limit'} (see store.maxKeys)`),
  });
}

/** What identifies a store's configuration: a reload that changes it takes effect only at restart. */
export function storeIdentity(config: Config['store']): string {
  return JSON.stringify(config.redis ?? 'memory');
}

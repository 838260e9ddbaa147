/**
 * A Redis store whose log lines a test reads: apart from redis-server.ts, so that a file that only runs a Redis
 * (for a `postern serve` or a client of its own) does not load the engine's store.
 */
import { Writable } from 'node:stream';
import { createLogger } from '../../engine/logging/logger.ts';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';

/** A Redis store whose log lines are kept (JSON, one per entry). */
export function loggedStore(url: string, keyPrefix: string, timeoutMs: number): { store: RedisCounterStore; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({ write(chunk: Buffer, _enc, cb) { lines.push(...chunk.toString().split('\n').filter(Boolean)); cb(); } });
  return { store: new RedisCounterStore({ url, keyPrefix, timeoutMs }, createLogger('info', sink)), lines };
}

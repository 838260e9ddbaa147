/**
 * Open-connection slots in Redis (`limits.connectionsPerIpInStore`), so that one per-address limit holds
 * over every server sharing the store. Each open connection holds a lease: a member of a sorted set per
 * listener and address, scored with its expiry on Redis's own clock (TIME), so the servers' clocks do not
 * matter. Taking a slot is one script: drop the expired leases, count the rest, add ours when below the
 * limit. Every process renews all its leases in one round trip every third of the lease time; a closed
 * connection gives its lease back; the leases of a process that died expire within the lease time.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../logging/logger.ts';
import type { ConnectionSlots } from './counter-store.ts';
import { luaScript, type LuaScript, type RunScript } from './lua-script.ts';

/** Redis's clock in milliseconds (scripts are replicated by their effects: TIME is allowed). */
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/** KEYS[1] the set; ARGV limit, lease ms, member. → 1 taken, 0 full */
const ACQUIRE = luaScript(`${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`);

/**
 * KEYS the sets, ARGV lease ms then one member per key. A lease that expired or was lost (a Redis restart)
 * while its connection stayed open is added again: the connection is still there.
 */
const RENEW = luaScript(`${NOW}
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease)
end
return #KEYS`);

/** KEYS the sets, ARGV one member per key. */
const RELEASE = luaScript(`for i, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[i]) end
return #KEYS`);

export const SLOT_SCRIPTS: readonly LuaScript[] = [ACQUIRE, RENEW, RELEASE];

/** Leases per renewal or release script: keeps each script short, so Redis is never held up long. */
const BATCH = 1000;

export class RedisConnectionSlots implements ConnectionSlots {
  readonly #run: RunScript;
  readonly #prefix: string;
  readonly #leaseMs: number;
  readonly #log: Logger;
  /** This process among all that share the store. */
  readonly #node = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  /** The leases held now: member → full key. */
  readonly #held = new Map<string, string>();
  /** Releases on their way (close() waits for them). */
  readonly #releasing = new Set<Promise<unknown>>();
  #next = 0;
  #timer: NodeJS.Timeout | null = null;
  #renewing = false;

  constructor(run: RunScript, keyPrefix: string, leaseSeconds: number, logger: Logger) {
    this.#run = run;
    this.#prefix = keyPrefix;
    this.#leaseMs = leaseSeconds * 1000;
    this.#log = logger;
  }

  async acquire(key: string, limit: number): Promise<(() => void) | null> {
    const fullKey = this.#prefix + key;
    const member = `${this.#node}:${++this.#next}`;
    let taken: unknown;
    try {
      taken = await this.#run(ACQUIRE, [fullKey], [String(limit), String(this.#leaseMs), member]);
    } catch (err) {
      // It may have been taken before the answer was lost: give it back (or let it expire).
      this.#release([[member, fullKey]]);
      throw err;
    }
    if (Number(taken) !== 1) return null;
    this.#held.set(member, fullKey);
    this.#timer ??= setInterval(() => this.#renew(), this.#leaseMs / 3).unref();
    return () => {
      if (this.#held.delete(member)) this.#release([[member, fullKey]]);
    };
  }

  /** Leases held by this process now (tests, status). */
  get held(): number { return this.#held.size; }

  /** Stop renewing and give back every lease still held, waiting for the releases (each bounded). */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#release([...this.#held]);
    this.#held.clear();
    await Promise.allSettled([...this.#releasing]);
  }

  /** One renewal at a time: a slow Redis must not pile them up. */
  #renew(): void {
    if (this.#renewing || this.#held.size === 0) return;
    this.#renewing = true;
    const held = [...this.#held];
    const batches: Promise<unknown>[] = [];
    for (let i = 0; i < held.length; i += BATCH) {
      const part = held.slice(i, i + BATCH);
      batches.push(this.#run(RENEW, part.map(([, key]) => key), [String(this.#leaseMs), ...part.map(([member]) => member)]));
    }
    Promise.all(batches).then(
      () => { this.#renewing = false; },
      (err: Error) => {
        this.#renewing = false;
        this.#log.debug({ err: { message: err.message }, leases: held.length }, 'store: connection leases not renewed (they expire unless renewed in time)');
      },
    );
  }

  #release(leases: Array<[member: string, key: string]>): void {
    for (let i = 0; i < leases.length; i += BATCH) {
      const part = leases.slice(i, i + BATCH);
      const done = this.#run(RELEASE, part.map(([, key]) => key), part.map(([member]) => member)).catch((err: Error) => {
        this.#log.debug({ err: { message: err.message }, leases: part.length }, 'store: connection lease not given back (it expires)');
      });
      this.#releasing.add(done);
      void done.finally(() => this.#releasing.delete(done));
    }
  }
}

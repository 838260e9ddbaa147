/**
 * Counters in Redis, shared by every Postern that uses the same server and key prefix, and the connection
 * slots of limits.connectionsPerIpInStore (redis-connection-slots.ts). Each operation is one Lua script
 * (atomic on the server, one round trip; the rate() calls of one turn share one), bounded by `timeoutMs`. Commands are never
 * queued while the connection is down: they fail at once, and the client reconnects in the background.
 */
import { randomBytes } from 'node:crypto';
import { createClient, ErrorReply } from 'redis';
import type { AuthFailureStore } from '../auth/failure-limiter.ts';
import type { Logger } from '../logging/logger.ts';
import { StoreUnavailable, STORE_KEYS, type CounterStore, type RateResult } from './counter-store.ts';
import { luaScript, type LuaScript } from './lua-script.ts';
import { metrics } from '../metrics/metrics.ts';
import { RedisConnectionSlots, SLOT_SCRIPTS } from './redis-connection-slots.ts';
import { DeadlineQueue, type Waiting } from './deadline-queue.ts';
import { MAX_REPLY_BYTES, ReplyBytes } from './reply-bytes.ts';
import { redisTarget } from './redis-url.ts';

export interface RedisStoreOptions {
  url: string;
  keyPrefix: string;
  timeoutMs: number;
  /** How long a connection's slot outlives the last renewal by its process (limits.connectionsPerIpInStore). */
  connectionLeaseSeconds?: number;
}

/**
 * rate() for the calls of one turn, in their order (a key may come more than once): KEYS one per call, ARGV
 * its limit and window (ms). Each call is counted when below its limit; a window opens with its first
 * counted call. → allowed, count, pttl per call. One command for many calls: one round trip, one script run.
 * Counted first, taken back when over the limit: a call within its limit (nearly all) is two Redis commands,
 * INCR and PTTL (or PEXPIRE, opening a window), where reading first made it three; each command a script
 * runs costs Redis several times the command's own work (measured: docs/benchmarks.md). A refused call is
 * three (INCR, DECR, PTTL), and writes (a limit below 1 deletes the key it made). The script runs as a whole:
 * nothing sees the count over the limit. A key Redis cannot count (not an integer: another program's value
 * under the prefix) fails its own call alone (-1 and Redis's message in its place, nothing written): as an
 * error of the whole script it failed every other client's call of the turn too. A window ends at most `window`
 * from now: one opened longer (the window shortened by a reload) or without an expiry (PERSIST, a copy of the keys
 * without their TTLs) kept an address or identity refused as long, or for ever, since a refused call never set one.
 */
/** See RedisCounterStore's #silenceMs. */
const SILENCE_MS = 5000;
const RATE = `
local out = {}
for i, key in ipairs(KEYS) do
  local window = ARGV[2 * i]
  local count = redis.pcall('INCR', key)
  local allowed = 1
  local ttl
  if type(count) == 'table' then
    allowed = -1
    ttl = 0
    count = tostring(count.err)
  elseif count > tonumber(ARGV[2 * i - 1]) then
    allowed = 0
    count = redis.call('DECR', key)
    if count == 0 then
      redis.call('DEL', key)
      ttl = 0
    else
      ttl = redis.call('PTTL', key)
    end
  elseif count == 1 then
    redis.call('PEXPIRE', key, window)
    ttl = tonumber(window)
  else
    ttl = redis.call('PTTL', key)
  end
  if allowed ~= -1 and count ~= 0 and (ttl < 0 or ttl > tonumber(window)) then
    redis.call('PEXPIRE', key, window)
    ttl = tonumber(window)
  end
  out[3 * i - 2] = allowed
  out[3 * i - 1] = count
  out[3 * i] = ttl
end
return out`;

/** Add to a counter; a new one (no expiry yet) gets its time to live. → the new value */
const ADD = `
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value`;

/**
 * AUTH failures: one sorted set per address, each failure scored with its time on Redis's own clock (TIME),
 * as the connection slots are. On each server's clock, a server whose clock ran behind recorded failures
 * the others took for expired (and the others' adds deleted them), and one ahead deleted theirs at its
 * every add: an attacker spreading guesses over the servers passed the limit. ARGV[1] is the window (ms).
 */
const REDIS_NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/** Record one failure (ARGV[2]: a unique member), drop those before the window, count the rest. */
const FAILURE_ADD = `${REDIS_NOW}
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('ZCARD', KEYS[1])`;

/** The failures within the window. */
const FAILURE_COUNT = `${REDIS_NOW}
return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')`;

/**
 * A guess about to be decided (AuthFailureStore.claim): KEYS[1] the address's failures, KEYS[2] its guesses being
 * decided (scored with when their place lapses). Drops what is past, and when the failures and the guesses
 * together are fewer than ARGV[3], adds this guess (ARGV[2]: its member) for ARGV[4] ms at most. ARGV[1] is the
 * window (ms) the failures are kept for, ARGV[5] the one they are counted in (the listener's). → {1 granted or 0, the failures}.
 */
const GUESS_CLAIM = `${REDIS_NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local failures = redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[5])), '+inf')
if failures + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {0, failures} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, failures}`;

/** The guess ARGV[2] decided: its place given back, and when ARGV[3] is 1 its failure recorded as FAILURE_ADD does. → the failures, or -1. */
const GUESS_SETTLE = `${REDIS_NOW}
redis.call('ZREM', KEYS[2], ARGV[2])
if ARGV[3] ~= '1' then return -1 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('ZCARD', KEYS[1])`;

/**
 * How long a guess's place lasts at most (ms): a process that dies deciding it never gives it back. Longer
 * than any decision (an argon2 verification and an auth script, within sandbox.timeoutMs).
 */
const GUESS_PLACE_MS = 60_000;

const SCRIPTS = {
  rate: luaScript(RATE), add: luaScript(ADD), failureAdd: luaScript(FAILURE_ADD), failureCount: luaScript(FAILURE_COUNT),
  guessClaim: luaScript(GUESS_CLAIM), guessSettle: luaScript(GUESS_SETTLE),
};

/**
 * Calls sent and not yet answered, at most: each keeps memory in the client until its reply, and a
 * hung server's backlog would be run once it wakes (a healthy one answers within timeoutMs: far fewer).
 */
const MAX_UNANSWERED = 1000;

/** rate() calls of one turn per command at most: one script run holds Redis for all of them. */
const MAX_RATES_PER_COMMAND = 100;

/**
 * A connection that sent nothing for this long is sent a PING (ms): checked this often, so at most twice this
 * passes without a command. A Redis with `timeout` set (managed services often do; whole seconds, 1 at least)
 * closed it while the server was idle: each time an outage at error level and the gauge at 1, and a call sent
 * as it closed failed closed. Two PINGs a second cost an idle Redis nothing it would notice.
 */
const IDLE_PING_MS = 500;

/** After a READONLY answer the connection is made again, at most this often (ms). */
const RECONNECT_AFTER_READONLY_MS = 1000;

/**
 * Error codes with which Redis refuses commands for a while, whatever their keys: a password or ACL it
 * wants (NOAUTH, WRONGPASS, NOPERM), memory full under noeviction (OOM), a failed snapshot (MISCONF), a
 * dataset loading, a long script (BUSY), a replica cut off from its master. Connected and answering, it
 * refused every call (each failed closed) with nothing logged above debug and postern_store_unreachable at 0:
 * the documented alert never fired. Not an error about one key (WRONGTYPE, a value that is no integer).
 * The first group refuses reads and writes alike; the second only some commands (OOM and MISCONF refuse
 * writes and let GET and read-only scripts through, an ACL may deny one command), so only a command of the
 * kind refused (read, write) that goes through ends it: the others do not make the log flap.
 */
const REFUSES_ALL = new Set(['NOAUTH', 'WRONGPASS', 'LOADING', 'BUSY', 'MASTERDOWN']);
const REFUSES_SOME = new Set(['OOM', 'MISCONF', 'NOREPLICAS', 'NOPERM']);

/** The refusal an error message carries ('all' or 'some', see REFUSES_ALL), or null. */
function refusalOf(message: string): 'all' | 'some' | null {
  const code = /^[A-Z]+/.exec(message)?.[0] ?? '';
  return REFUSES_ALL.has(code) ? 'all' : REFUSES_SOME.has(code) ? 'some' : null;
}

/** How long the client waits between reconnection attempts (ms), growing to at most 2 s. */
const reconnectDelay = (retries: number): number => Math.min(50 * 2 ** Math.min(retries, 6), 2000);

type RedisClient = ReturnType<typeof createClient>;

export class RedisCounterStore implements CounterStore {
  readonly kind = 'redis';
  #client: RedisClient;
  readonly #url: string;
  /** The time limit of a connection, and of its first commands' answers (ms). */
  readonly #connectTimeout: number;
  /**
   * How long a new connection's first commands, or commands on an open one, may go unanswered before the
   * connection is given up on (a hung or vanished server). Seconds, not the call's time limit: a redis-server
   * (or this process) descheduled for a second on a loaded machine is slow, not gone, and each replacement
   * fails the calls in flight.
   */
  readonly #silenceMs: number;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  readonly #log: Logger;
  readonly connectionSlots: RedisConnectionSlots;
  readonly #deadlines = new DeadlineQueue();
  #down = false;
  #closed = false;
  /** When the connection was last dropped for a READONLY answer (performance.now()), see #reconnect. */
  #reconnectedAt = Number.NEGATIVE_INFINITY;
  /** Calls given to the client whose reply (or failure) has not come, timed out ones included. */
  #unanswered = 0;
  /** rate() calls of this turn not sent yet: they go as one command at its end (#sendRates). */
  #rates: RateCalls | null = null;
  /** Runs out when a new connection has not answered its first commands in time (see #handshakeHung). */
  #handshake: NodeJS.Timeout | undefined;
  /** Since when commands have waited with nothing heard from Redis (performance.now()); null: none waiting. */
  #silentSince: number | null = null;
  /** When the last command was given to the client (performance.now()), for the idle PING. */
  #lastSent = performance.now();
  readonly #idlePing: NodeJS.Timeout;
  /** When the idle PING in flight was sent; null: none is. */
  #pingSince: number | null = null;
  /** Redis answers but refuses commands (see REFUSES_ALL): every command, or reads and/or writes; null when it does not. */
  #refusing: { all: boolean; reads: boolean; writes: boolean } | null = null;
  /** Redis's eviction settings were read (see #checkEviction). */
  #evictionChecked = false;
  /** The bytes the connection sent toward its next reply, capped (see reply-bytes.ts). */
  readonly #replyBytes = new ReplyBytes((bytes) => this.#replyTooLarge(bytes));

  /** Unreachable, or refusing every command of a kind (see REFUSES_ALL): what postern_store_unreachable shows. */
  get unreachable(): boolean {
    return this.#down;
  }

  /**
   * `sayEviction`: this process reads Redis's eviction settings (#checkEviction). Under postern serve the queue
   * process does, for the server: each worker said it too (one line a process, for the one Redis they share).
   */
  constructor(options: RedisStoreOptions, logger: Logger, opts: { sayEviction?: boolean } = {}) {
    this.#evictionChecked = opts.sayEviction === false;
    this.#prefix = options.keyPrefix;
    this.#timeoutMs = options.timeoutMs;
    this.#log = logger.child({ component: 'store' });
    this.#url = options.url;
    this.#connectTimeout = Math.max(1000, options.timeoutMs);
    this.#silenceMs = Math.max(SILENCE_MS, options.timeoutMs);
    this.#client = this.#newClient();
    this.#idlePing = setInterval(() => this.#pingIfIdle(), IDLE_PING_MS).unref();
    this.connectionSlots = new RedisConnectionSlots(async (s, keys, args) => {
      const value = await this.#eval(s, keys, args);
      this.#served(true);
      return value;
    }, this.#prefix,
      options.connectionLeaseSeconds ?? 30, this.#log);
  }

  /**
   * A client, connecting: its events count only while it is the store's. The first connection is not waited
   * for: until it is up, calls fail closed like during any outage.
   */
  #newClient(): RedisClient {
    const { url, path, ...login } = redisTarget(this.#url);
    const socket = { connectTimeout: this.#connectTimeout, reconnectStrategy: reconnectDelay };
    const client = createClient({
      ...(path === undefined ? { url } : login),
      disableOfflineQueue: true,
      socket: path === undefined ? socket : { ...socket, path },
    });
    const current = (): boolean => client === this.#client && !this.#closed;
    // The client's connectTimeout ends with the TCP (or TLS) connection; its first commands (AUTH, CLIENT
    // SETINFO) have no time limit. A server that takes the connection and never answers them (hung, paused,
    // a proxy holding connections without a backend) left the client connected and never ready: every call
    // failed, closed, with nothing logged, and that connection was waited on for good.
    client.on('connect', () => {
      if (!current()) return;
      clearTimeout(this.#handshake);
      this.#handshake = setTimeout(() => this.#handshakeHung(), this.#silenceMs).unref();
    });
    // Without an 'error' listener a lost connection would end the process; one line per outage.
    client.on('error', (err: Error) => {
      if (!current()) return;
      clearTimeout(this.#handshake); // the connection failed: the client's own reconnection takes over
      if (this.#down) return;
      this.#down = true;
      metrics.storeUnreachable.set(1);
      this.#log.error({ err: { message: err.message } }, 'store: Redis unreachable; calls that need it fail closed until it is back');
    });
    // The client makes its next socket right after this event (reply-bytes.ts).
    client.on('reconnecting', () => { if (current()) this.#replyBytes.claim(); });
    client.on('ready', () => {
      if (!current()) return;
      this.#replyBytes.replied(); // the first commands' answers (AUTH, CLIENT SETINFO) are the client's own
      clearTimeout(this.#handshake);
      if (this.#down) this.#log.info('store: Redis reachable again');
      this.#down = false;
      this.#refusing = null; // a new connection: its first answers tell again
      metrics.storeUnreachable.set(0);
      // Sent before any call can be (this runs as the connection becomes ready): every EVALSHA then finds
      // its script, even the first after a Redis restart, so each call is one round trip.
      for (const lua of [...Object.values(SCRIPTS), ...SLOT_SCRIPTS]) this.#send(['SCRIPT', 'LOAD', lua.text]).catch(() => undefined);
      this.#checkEviction(client);
    });
    this.#replyBytes.claim();
    client.connect().catch(() => { /* reported by the 'error' listener; the client keeps trying */ });
    return client;
  }

  /**
   * Once per process (the queue process's, a single process's), on the first connection that answers: whether Redis may evict keys. The built-in limits'
   * counts (auth failures, connection slots, messagesPerIdentity) share the server with scripts' rate() and
   * counter() keys, which clients can multiply (a key per sender address); under an evicting policy with
   * `maxmemory` set, a flood of those made Redis drop the auth-failure counts as well, and a password guesser
   * started again from zero. Under `noeviction` a full Redis refuses writes (`OOM`), and every call fails
   * closed instead (see the refusals in #commands). Sent past #send: an error here (CONFIG renamed or refused,
   * as managed services do) says nothing about the store, and must not count as one.
   */
  #checkEviction(client: RedisClient): void {
    if (this.#evictionChecked) return;
    client.sendCommand(['CONFIG', 'GET', 'maxmemory*']).then((reply) => {
      if (this.#evictionChecked || !Array.isArray(reply)) return;
      this.#evictionChecked = true;
      const settings = new Map<string, string>();
      for (let i = 0; i + 1 < reply.length; i += 2) settings.set(String(reply[i]), String(reply[i + 1]));
      const policy = settings.get('maxmemory-policy') ?? 'noeviction';
      const maxmemory = settings.get('maxmemory') ?? '0';
      if (policy === 'noeviction' || maxmemory === '0') return; // nothing is ever evicted
      this.#log.warn({ maxmemoryPolicy: policy, maxmemory: Number(maxmemory) },
        `store: Redis evicts keys when full (maxmemory-policy ${policy}): scripts' keys can push out the auth-failure and connection counts, and those limits start again from zero; use maxmemory-policy noeviction (a full Redis then fails calls closed)`);
    }, () => { /* CONFIG refused or renamed: not ours to know */ });
  }

  /**
   * The calls of one turn (a batch of hooks each awaiting rate(), the continuations of one delivery) go to
   * Redis as one command, sent when the turn's code is done (a microtask): the client, the socket and Redis
   * then work once per turn, not once per call. Each call still fails or succeeds as a whole.
   */
  rate(key: string, limit: number, windowSeconds: number): Promise<RateResult> {
    let calls = this.#rates;
    if (calls === null || calls.size === MAX_RATES_PER_COMMAND) {
      const batch = calls = this.#rates = new RateCalls();
      queueMicrotask(() => this.#sendRates(batch));
    }
    return calls.add(this.#prefix + key, String(limit), String(windowSeconds * 1000));
  }

  async get(key: string): Promise<number> {
    const value = await this.#send(['GET', this.#prefix + key]);
    this.#served(false);
    return value === null ? 0 : integer(value, 'GET');
  }

  async add(key: string, n: number, ttlSeconds: number): Promise<number> {
    const value = await this.#evalKey(SCRIPTS.add, this.#prefix + key, String(n), String(ttlSeconds * 1000));
    this.#served(true);
    return integer(value, 'add()');
  }

  /** The window is what the limiter asks for (`now - since`); the times themselves are Redis's (FAILURE_ADD). */
  authFailures(): AuthFailureStore {
    return {
      add: async (ip, now, since) => {
        // A unique member per failure: two at the same millisecond are two failures.
        const member = `${now}:${randomBytes(6).toString('hex')}`;
        const value = await this.#eval(SCRIPTS.failureAdd, [this.#prefix + STORE_KEYS.authFailures(ip)],
          [String(Math.max(1, now - since)), member]);
        this.#served(true);
        return integer(value, 'an AUTH failure');
      },
      claim: async (ip, now, since, limit, countSince = since) => {
        const keys = [this.#prefix + STORE_KEYS.authFailures(ip), this.#prefix + STORE_KEYS.authGuesses(ip)];
        const window = String(Math.max(1, now - since));
        const member = `${now}:${randomBytes(6).toString('hex')}`;
        const giveBack = (): Promise<unknown> => this.#eval(SCRIPTS.guessSettle, keys, [window, member, '0']);
        const counted = String(Math.max(1, now - countSince));
        const reply = await this.#eval(SCRIPTS.guessClaim, keys, [window, member, String(limit), String(GUESS_PLACE_MS), counted]).catch((err: unknown) => {
          // Not answered in time, it may still have run: a place nobody settles would hold up the address's next
          // logins for GUESS_PLACE_MS. Given back in passing (in order after it on the connection).
          giveBack().catch(() => undefined);
          throw err;
        });
        this.#served(true);
        const [granted, failures] = Array.isArray(reply) ? reply : [];
        return {
          granted: integer(granted, 'an AUTH guess') === 1,
          failures: integer(failures, 'an AUTH guess'),
          settle: async (failed) => {
            const value = integer(await (failed ? this.#eval(SCRIPTS.guessSettle, keys, [window, member, '1']) : giveBack()), 'an AUTH guess');
            this.#served(true);
            return failed ? value : null;
          },
        };
      },
      count: async (ip, since) => {
        const value = await this.#eval(SCRIPTS.failureCount, [this.#prefix + STORE_KEYS.authFailures(ip)],
          [String(Math.max(1, Date.now() - since))]);
        this.#served(false);
        return integer(value, 'AUTH failures');
      },
    };
  }

  /**
   * Gives back the connection slots still held (one round trip, within timeoutMs), then closes at once:
   * a hung server must not hold up shutdown (calls still waiting fail, closed).
   */
  async close(): Promise<void> {
    await this.connectionSlots.close();
    this.#closed = true;
    clearTimeout(this.#handshake);
    clearInterval(this.#idlePing);
    this.#deadlines.expireAll();
    try {
      this.#client.destroy();
    } catch {
      // already closed
    }
  }

  /**
   * See IDLE_PING_MS. Straight to the client, not through #send: its answer, or its error, says nothing about
   * calls (an ACL user need not be allowed PING).
   */
  #pingIfIdle(): void {
    const client = this.#client;
    if (this.#closed || !client.isReady) return;
    const now = performance.now();
    if (this.#pingSince !== null) {
      // One at a time (a hung server must not gather one a tick for days); one unanswered for #silenceMs is
      // the silence of #checkSilence, found before a call meets it.
      if (now - this.#pingSince >= this.#silenceMs) this.#silenceFor(now - this.#pingSince);
      return;
    }
    if (now - this.#lastSent < IDLE_PING_MS) return;
    this.#lastSent = this.#pingSince = now;
    const answered = (): void => {
      if (this.#client !== client) return;
      this.#pingSince = null;
      this.#replyBytes.replied();
    };
    client.sendCommand(['PING']).then(answered, answered);
  }

  /**
   * Run a script by its SHA1: one round trip. Its text is sent only when Redis does not have it (scripts
   * are loaded at every connect, so only after a SCRIPT FLUSH).
   */
  #eval(s: LuaScript, keys: readonly string[], args: readonly string[]): Promise<unknown> {
    return this.#send(['EVALSHA', s.sha, String(keys.length), ...keys, ...args], s.text);
  }

  #sendRates(calls: RateCalls): void {
    if (this.#rates === calls) this.#rates = null;
    const n = calls.size;
    try {
      this.#send(['EVALSHA', SCRIPTS.rate.sha, String(n)].concat(calls.keys, calls.args), SCRIPTS.rate.text, n)
        .then((reply) => this.#served(true, calls.answered(reply)), (err: unknown) => calls.failed(err));
    } catch (err) {
      // Never an exception out of a microtask (it would end the process): the calls fail closed.
      calls.failed(new StoreUnavailable(`store unavailable (redis): ${err instanceof Error ? err.message : String(err)}`, { cause: err }));
    }
  }

  /** #eval of a script with one key and two arguments (add): the command built in one go, per call. */
  #evalKey(s: LuaScript, key: string, a: string, b: string): Promise<unknown> {
    return this.#send(['EVALSHA', s.sha, '1', key, a, b], s.text);
  }

  /**
   * One command, answered within timeoutMs or failed. The client's own `timeout` covers only the wait to be
   * sent, not the wait for the reply (a hung server): the deadline queue covers both (one timer for all
   * calls, see deadline-queue.ts). A reply after the deadline is dropped; the operation may still have
   * counted on the server, which errs on the side of refusing. `script`: an EVALSHA's script text, sent
   * with EVAL when Redis answers NOSCRIPT (it lost the script). `calls`: how many calls the command carries.
   */
  #send(args: string[], script?: string, calls = 1): Promise<unknown> {
    // A server that stopped answering while its connection stays up (paused, swapping) keeps every command
    // sent to it waiting in the client, and each would run once it wakes: past this many calls, fail at once.
    if (this.#unanswered + calls > MAX_UNANSWERED) {
      this.#checkSilence(); // no call is sent, so none times out: checked here too
      return Promise.reject(new StoreUnavailable(`store unavailable (redis): ${this.#unanswered} calls sent and not answered (a hung server?)`));
    }
    this.#unanswered += calls;
    const now = this.#lastSent = performance.now();
    this.#silentSince ??= now;
    const command = new PendingCommand(this.#commands, now + this.#timeoutMs, args, script, calls);
    this.#deadlines.add(command);
    this.#client.sendCommand(args).then(command.answered, command.failed);
    return command.promise;
  }

  /** What the commands in flight report back (see PendingCommand). */
  readonly #commands: CommandOwner = {
    replied: (command, heard) => {
      if (heard) this.#replyBytes.replied();
      this.#unanswered -= command.calls;
      if (heard) this.#silentSince = this.#unanswered > 0 ? performance.now() : null;
      else if (this.#unanswered === 0) this.#silentSince = null;
      if (!command.settled) this.#deadlines.settle(command);
    },
    timedOut: (command) => {
      command.reject(new StoreUnavailable(`store unavailable (redis): no answer within ${this.#timeoutMs} ms (timeout)`));
      this.#checkSilence();
    },
    resend: (args, calls) => this.#send(args, undefined, calls),
    errorReply: (message, args) => {
      if (message.startsWith('READONLY')) this.#reconnect(message);
      else this.#refused(message, writes(args));
    },
  };

  /**
   * Redis refused a command (see REFUSES_ALL): an outage like an unreachable server, logged once and in the
   * gauge, until a command it refused goes through again (#served). Other error replies are one call's.
   */
  #refused(message: string, wrote: boolean): void {
    const refusal = refusalOf(message);
    if (refusal === null || this.#closed) return;
    const r = this.#refusing ??= { all: false, reads: false, writes: false };
    if (refusal === 'all') r.all = true;
    else if (wrote) r.writes = true;
    else r.reads = true;
    this.#outage(message, 'store: Redis refuses commands (a password, an ACL, memory full, a failed save?); calls that need it fail closed until it accepts them again');
  }

  /**
   * A command answered (`wrote`: one that writes). It ends a refusal outage of every command, or the refusal of
   * its kind (reads, writes) when only some were refused; `refusal`: a refusal found in the answer itself (a
   * rate() call's, see RateCalls.answered).
   */
  #served(wrote: boolean, refusal: string | null = null): void {
    if (refusal !== null) return this.#refused(refusal, true);
    const r = this.#refusing;
    if (r === null) return;
    if (!r.all) {
      if (wrote) r.writes = false;
      else r.reads = false;
      if (r.reads || r.writes) return;
    }
    this.#refusing = null;
    this.#down = false;
    metrics.storeUnreachable.set(0);
    this.#log.info('store: Redis accepts commands again');
  }

  /**
   * Redis answered READONLY: this connection reaches a replica now. After a failover behind a proxy, a
   * virtual address or a DNS name (HAProxy checking for the master, Sentinel-managed or cloud Redis), the
   * connection made to the old master stays open to it, demoted, and every write failed closed for good
   * while the store looked reachable. A new connection reaches whatever is master now: at most one a second,
   * in case it is still a replica.
   */
  #reconnect(message: string): void {
    const now = performance.now();
    if (this.#closed || now - this.#reconnectedAt < RECONNECT_AFTER_READONLY_MS) return;
    this.#reconnectedAt = now;
    this.#outage(message, 'store: Redis answers READONLY (a replica: failed over?); calls that need it fail closed; connecting again');
    this.#client.destroy();
    this.#replyBytes.claim();
    this.#client.connect().catch(() => { /* reported by the 'error' listener; the client keeps trying */ });
  }

  /**
   * A new connection's first commands not answered in time (see #newClient): an outage, and a new client. Not
   * the same client connected again: destroyed while it waits for those answers, its own reconnection loop
   * went on beside the new one, each making connections.
   */
  #handshakeHung(): void {
    if (this.#closed) return;
    this.#outage(`no answer to the first commands within ${this.#silenceMs} ms`,
      'store: Redis took the connection but did not answer its first commands (hung?); calls that need it fail closed; connecting again');
    this.#replaceClient();
  }

  /**
   * Commands have waited for #silenceMs (at least 5 s) with nothing heard on the connection: its far end
   * may be gone without a reset (a host powered off or partitioned away; behind a DNS name or virtual address,
   * another server answers now). Kept, every call timed out until TCP gave up on it, up to a quarter of an
   * hour. A server merely hung is connected to again the same way, and answers once it wakes.
   */
  #checkSilence(): void {
    if (this.#closed || this.#silentSince === null || performance.now() - this.#silentSince < this.#silenceMs) return;
    this.#silenceFor(this.#silenceMs);
  }

  /** Nothing heard for `ms`: an outage, and a new connection. */
  #silenceFor(ms: number): void {
    this.#outage(`no answer for ${Math.round(ms)} ms`,
      'store: Redis answered nothing for a while (connection lost, or the server hung); calls that need it fail closed; connecting again');
    this.#silentSince = null;
    this.#replaceClient();
  }

  /**
   * The connection sent more than MAX_REPLY_BYTES toward one reply: an outage. reply-bytes.ts closes it; the
   * client fails the commands on it (closed) and connects again.
   */
  #replyTooLarge(bytes: number): void {
    if (this.#closed) return;
    this.#outage(`${bytes} bytes toward one reply (at most ${MAX_REPLY_BYTES})`,
      'store: Redis sent a reply larger than any Postern asks for (not Redis, or broken?); calls that need it fail closed; connecting again');
  }

  /** The client replaced by a new one, connecting; the old one closed (its commands fail). */
  #replaceClient(): void {
    this.#pingSince = null;
    const old = this.#client;
    this.#client = this.#newClient();
    try {
      old.destroy();
    } catch {
      // already closed
    }
  }

  /** Logged once per outage. */
  #outage(message: string, line: string): void {
    if (this.#down) return;
    this.#down = true;
    metrics.storeUnreachable.set(1);
    this.#log.error({ err: { message } }, line);
  }
}

/** Whether a command writes: every script but the AUTH failure count (GET and SCRIPT LOAD do not). */
function writes(args: readonly string[]): boolean {
  const [name, script] = args;
  return name === 'EVALSHA' ? script !== SCRIPTS.failureCount.sha : name === 'EVAL' && script !== SCRIPTS.failureCount.text;
}

/**
 * A reply that must be a whole number (a count, a counter's value; GET gives its digits as a string). Anything
 * else, from a proxy or a server that is not what it should be, fails closed: as NaN it compared false with
 * every limit (AUTH failures never reached authFailuresPerIp).
 */
function integer(reply: unknown, what: string): number {
  const n = typeof reply === 'string' && /^-?\d+$/.test(reply) ? Number(reply) : reply;
  if (typeof n !== 'number' || !Number.isInteger(n)) throw new StoreUnavailable(`store unavailable (redis): unexpected reply to ${what}`);
  return n;
}

/** The rate() calls of one turn, sent together (RATE): their keys and arguments, and how to settle each. */
class RateCalls {
  readonly keys: string[] = [];
  readonly args: string[] = [];
  readonly #resolve: Array<(result: RateResult) => void> = [];
  readonly #reject: Array<(error: unknown) => void> = [];

  get size(): number {
    return this.keys.length;
  }

  add(key: string, limit: string, windowMs: string): Promise<RateResult> {
    this.keys.push(key);
    this.args.push(limit, windowMs);
    return new Promise((resolve, reject) => {
      this.#resolve.push(resolve);
      this.#reject.push(reject);
    });
  }

  /**
   * RATE's reply: three numbers per call, in the calls' order (-1, Redis's message, 0 for a call Redis refused).
   * → the message of a call Redis refused as it refuses every command (see REFUSES_ALL), else null.
   */
  answered(reply: unknown): string | null {
    const r = reply as unknown[];
    // Anything but numbers (a proxy or a server that answers something else) fails closed, not as "not allowed".
    if (!Array.isArray(r) || r.length !== 3 * this.size || !r.every((n, i) => Number.isInteger(n) || (i % 3 === 1 && r[i - 1] === -1))) {
      this.failed(new StoreUnavailable(`store unavailable (redis): unexpected reply to ${this.size} rate() calls`));
      return null;
    }
    let refusal: string | null = null;
    for (let i = 0; i < this.size; i++) {
      const allowed = r[3 * i] as number;
      if (allowed === -1) {
        const message = String(r[3 * i + 1]);
        if (refusal === null && refusalOf(message) !== null) refusal = message;
        this.#reject[i]!(new StoreUnavailable(`store unavailable (redis): ${message}`));
        continue;
      }
      this.#resolve[i]!({ allowed: allowed === 1, count: r[3 * i + 1] as number, resetSeconds: Math.max(0, Math.ceil(r[3 * i + 2] as number / 1000)) });
    }
    return refusal;
  }

  /** The command failed (unreachable, timeout, refused): every call of it fails closed. */
  failed(err: unknown): void {
    for (const reject of this.#reject) reject(err);
  }
}

interface CommandOwner {
  /** Its reply (or failure) came, in time or not; `heard`: from Redis (a reply or an error reply), not the client. */
  replied(command: PendingCommand, heard: boolean): void;
  /** Its deadline passed before a reply: fail it (the reply, if one comes, is dropped). */
  timedOut(command: PendingCommand): void;
  /** Redis did not have the script: send its text (one more round trip, once per script after a SCRIPT FLUSH). */
  resend(args: string[], calls: number): Promise<unknown>;
  /** Redis answered `args` with an error: READONLY (the connection reaches a replica), or one it may refuse everything with. */
  errorReply(message: string, args: readonly string[]): void;
}

/**
 * One command in flight: its promise, and its place in the deadline queue. One object per command, with the
 * client's promise settling it directly (no promise chained per step: a rate() per message makes these many).
 */
class PendingCommand implements Waiting {
  readonly #owner: CommandOwner;
  readonly deadline: number;
  readonly #args: string[];
  readonly #script: string | undefined;
  /** Calls it carries (rate() calls of one turn: see RateCalls). */
  readonly calls: number;
  settled = false;
  readonly promise: Promise<unknown>;
  resolve!: (value: unknown) => void;
  reject!: (error: unknown) => void;

  constructor(owner: CommandOwner, deadline: number, args: string[], script: string | undefined, calls: number) {
    this.#owner = owner;
    this.calls = calls;
    this.deadline = deadline;
    this.#args = args;
    this.#script = script;
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  expire(): void {
    this.settled = true;
    this.#owner.timedOut(this);
  }

  readonly answered = (value: unknown): void => {
    const late = this.settled;
    this.#owner.replied(this, true);
    if (!late) this.resolve(value);
  };

  readonly failed = (err: unknown): void => {
    const late = this.settled;
    this.#owner.replied(this, err instanceof ErrorReply);
    if (late) return;
    const message = err instanceof Error ? err.message : String(err);
    if (this.#script !== undefined && message.startsWith('NOSCRIPT')) return this.resolve(this.#owner.resend(['EVAL', this.#script, ...this.#args.slice(2)], this.calls));
    if (err instanceof ErrorReply || message.startsWith('READONLY')) this.#owner.errorReply(message, this.#args);
    this.reject(new StoreUnavailable(`store unavailable (redis): ${message}`, { cause: err }));
  };
}

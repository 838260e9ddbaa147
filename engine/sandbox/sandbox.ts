/**
 * A Sandbox runs one configuration generation's policy scripts on a small pool of isolates: calls go to
 * an idle isolate (or wait for one), a lost isolate is rebuilt, and every failure rejects — fail closed.
 */
import { runningCall } from './running-call.ts';
import type { HookName } from './api/index.ts';
import { ScriptErrors, ScriptFailure, type FailureKind } from './errors.ts';
import type { HostBridge, LogLevel } from './host-callbacks.ts';
import { FastPathPolicy, type FastPathStats } from './fast-path-policy.ts';
import { OperationJournal } from './operation-journal.ts';
import { IsolateSlot, RunAgain, teardownGrace, type BatchCall, type BatchSettled, type SharedConnection, type SlotOptions } from './isolate-slot.ts';
import type { ScriptSource } from './script-source.ts';
import { reportAbandonedRunning } from './unrecoverable.ts';
import { ClientShares, clientOf } from './client-shares.ts';
import { withLogBudget } from './log-budget.ts';
import { otherThreadsCpuMicros, otherThreadsNow, shownStuck, type ThreadReading } from './thread-cpu.ts';

export interface SandboxOptions {
  scripts: readonly ScriptSource[];
  /** A listener's shadow scripts: named so in crash records, which fence them at their first crash. */
  shadow?: boolean;
  /** Time limit of one call, in milliseconds. Default 100. */
  timeoutMs?: number;
  /** Heap limit of each isolate, in MB (isolated-vm's minimum is 8). Default 32. */
  memoryLimitMb?: number;
  /** Isolates in the pool. Default 2. */
  isolates?: number;
  /**
   * Isolates one client (see client-shares.ts) may hold at once on isolate threads; its further calls wait
   * while the others stay free for other clients. Default: half the pool, rounded up.
   */
  isolatesPerClient?: number;
  /**
   * How long a call may run on the event-loop thread before it is moved to an isolate thread (see
   * IsolateSlot.call). 0: always on an isolate thread. Default 5.
   */
  fastPathMs?: number;
  /**
   * `postern try`: hooks without a script that are still called, so that the context they would get is shown.
   * Each is answered at once with no verdict, on no isolate and under no deadline: what the administrator did
   * not write must not be able to fail (the server runs no call at all for such a hook).
   */
  standIns?: readonly HookName[];
  host: HostBridge;
}

/** The file name a stand-in's calls show (SandboxOptions.standIns), before the hook's name. */
export const STAND_IN_FILE = '(no script)';

export type IsolateState = 'idle' | 'busy' | 'rebuilding' | 'broken' | 'disposed';

export interface IsolateStats {
  index: number;
  state: IsolateState;
  /** V8 heap in use; null while the isolate is being rebuilt or is gone. */
  heapUsedBytes: number | null;
  calls: number;
  failures: number;
  rebuilds: number;
}

export interface SandboxStats {
  isolates: IsolateStats[];
  /** Calls waiting for an isolate. */
  queued: number;
  calls: number;
  failures: Record<FailureKind, number>;
  rebuilds: number;
  /** Isolates given up on because a call on them was still running at its deadline (see DEADLINE_SLACK_MS). */
  abandoned: number;
  /** Calls started on the event-loop thread (sandbox.fastPathMs): see FastPathStats. */
  fastPath: FastPathStats;
}

/**
 * Past timeoutMs, the most a call may take — waiting for an isolate included — before its caller gets a
 * failure whatever the script does. An isolate whose call is still running then is watched (Overdue) and
 * abandoned (disposing it does not wait for it) and replaced once it is shown stuck.
 */
export const DEADLINE_SLACK_MS = 500;

/**
 * An isolate still running a call at the call's deadline is abandoned once its thread has had this much CPU time
 * since and it still has not stopped: its stop was asked for at timeoutMs, and a thread that only was descheduled
 * stops within microseconds of getting the CPU back. Abandoning that one instead (a new isolate, every script
 * compiled again) cost a loaded machine more CPU and made more calls miss their deadlines. Which thread runs the
 * isolate is not known: each thread runnable at the deadline that still is must have had this much (thread-cpu.ts
 * shownStuck). The CPU time of all other threads together, as before, counted another isolate's work in time (or
 * libuv's pool hashing passwords) while the overdue isolate's thread had none: it was abandoned for it. Without /proc,
 * that sum is still the measure.
 */
export const STUCK_CPU_MS = 200;
/**
 * However little CPU time it got, an isolate overdue this long past its call's deadline is abandoned: a thread
 * starved that long serves nobody, and the pool needs the member (isolated-vm gives up on a thread 5 s after its
 * time limit too, see ivm-workarounds.ts newIsolate).
 */
export const OVERDUE_CAP_MS = 5000;

/**
 * How often deadlines are checked (one timer for all calls: a timer per call cost about a tenth of a quick
 * call). A call fails at most this long after its deadline; DEADLINE_SLACK_MS includes it.
 */
const DEADLINE_SWEEP_MS = 100;

interface Member {
  index: number;
  slot: IsolateSlot | null;
  state: IsolateState;
  calls: number;
  failures: number;
  rebuilds: number;
  /** When a broken member may try to rebuild again (performance.now(): a clock set back must not put it off). */
  retryAt: number;
  /** Bumped whenever the member gets a new slot: a call on an abandoned slot must not release the new one. */
  epoch: number;
  /** The hook of the call running alone on it (an isolate thread's, for up to timeoutMs); null otherwise. */
  hook: HookName | null;
  /** That call's client (see client-shares.ts), and since when it holds the member. */
  client: string | null;
  since: number;
}

/** A call failed at its deadline while its isolate was still running it: abandoned once shown stuck. */
interface Overdue {
  call: Call;
  member: Member;
  epoch: number;
  /** otherThreadsNow() (null without /proc: then otherThreadsCpuMicros()) and performance.now() at the deadline. */
  threadsAt: Map<number, ThreadReading> | null;
  cpuAt: number;
  since: number;
}

interface Waiter {
  /** The call waiting (null for a batch, whose calls each have their own deadline). */
  call: Call | null;
  grant(member: Member): void;
  refuse(error: Error): void;
}

/**
 * One call, from invoke() until it settles: the caller's promise, its deadline, and where it runs. However
 * often the scheduler runs it (a fast-path attempt stopped and run again, a batch stopped or lost), its
 * host operations take effect once: every attempt shares its journal (operation-journal.ts).
 */
interface Call extends BatchCall {
  journal: OperationJournal;
  file: string;
  deadlineAt: number;
  done: boolean;
  /** The member running the call, and its epoch then. */
  runningOn: { member: Member; epoch: number } | null;
  /** Set while the call's promise waits for host operations on a slot that is free meanwhile: forget it there. */
  cancel?: () => void;
  /** Who the call is for (see client-shares.ts): undefined until it first waits for or holds an isolate alone. */
  client?: string | null;
  /** Run again from the start because another call's code lost its isolate or was stopped: it goes first. */
  rerun: boolean;
  /** Neighbours in the sandbox's list of live calls (see LiveCalls). */
  prev: Call | null;
  next: Call | null;
  /** The caller's promise's own functions: settle the call through Sandbox.#resolve and #reject, never directly. */
  fulfil(value: unknown): void;
  fail(error: unknown): void;
}

/** What a settled call holds instead of its context (see LiveCalls.remove). */
const SETTLED_CTX: object = Object.freeze({});

/**
 * The calls not yet settled, as a list linked through the calls themselves. A Set cost a hash-table rehash
 * every few calls (one add and one delete per call); its old tables, once promoted, kept settled calls —
 * and their contexts — alive through scavenges (profile: +1.5 KB promoted per message). A settled call also
 * drops its context and connection facts at once: whatever still holds the call (a promise reaction, a
 * dead table in the old generation) no longer holds the message's objects.
 */
class LiveCalls {
  #head: Call | null = null;
  size = 0;

  add(call: Call): void {
    call.next = this.#head;
    if (this.#head) this.#head.prev = call;
    this.#head = call;
    this.size++;
  }

  remove(call: Call): void {
    if (call.prev) call.prev.next = call.next;
    else if (this.#head === call) this.#head = call.next;
    if (call.next) call.next.prev = call.prev;
    call.prev = call.next = null;
    call.ctx = SETTLED_CTX;
    call.shared = undefined;
    this.size--;
  }

  /** The calls now (a copy: settling one while going through them is safe). */
  all(): Call[] {
    const out: Call[] = [];
    for (let c = this.#head; c; c = c.next) out.push(c);
    return out;
  }
}

/** `calls` without those settled already (the same array when there are none, as nearly always). */
function withoutDone(calls: Call[]): Call[] {
  for (let i = 0; i < calls.length; i++) if (calls[i]!.done) return calls.filter((c) => !c.done);
  return calls;
}

/** Calls in one batch at most; more wait for the next (each batch shares one fast-path time limit). */
const MAX_BATCH = 32;

const REBUILD_RETRY_MS = 1000;

interface CertificateFacts {
  fingerprint: { sha256: string }; verified?: unknown; verifyError?: unknown; verifyErrorCode?: unknown;
  subject?: { dn?: unknown }; issuer?: { dn?: unknown }; pin?: { sha256?: unknown }; publicKeyFingerprint?: unknown;
}
/** Keys of certificate objects seen (a session's certificate object is passed to each of its calls, unchanged). */
const certificateKeys = new WeakMap<object, string>();

/**
 * The key a client certificate is kept under in an isolate: it must change with every fact of it that is not
 * the fingerprint's. The chain verdict depends on the listener's CA. A Postfix policy request's certificate is only
 * what its ccert_* attributes say, so one fingerprint may come with or without a public-key fingerprint (a Postfix
 * before 2.9 sends none) or with another subject: keyed by the fingerprint alone, a request was shown the pin and
 * subject an earlier request (another client's session) had left in the isolate.
 */
function certificateKey(cert: CertificateFacts): string {
  let key = certificateKeys.get(cert);
  if (key === undefined) {
    key = [
      cert.fingerprint.sha256, cert.verified, cert.verifyError, cert.verifyErrorCode,
      cert.pin?.sha256, cert.publicKeyFingerprint, cert.subject?.dn, cert.issuer?.dn,
    ].map(String).join('\n');
    certificateKeys.set(cert, key);
  }
  return key;
}

function positiveInteger(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min) throw new RangeError(`sandbox ${name} must be an integer ≥ ${min}, got ${value}`);
  return value;
}

export class Sandbox {
  readonly #scripts: ReadonlyMap<HookName, ScriptSource>;
  /** SandboxOptions.standIns, by hook: the file name a call of each shows. */
  readonly #standIns: ReadonlyMap<HookName, string>;
  readonly #options: SlotOptions;
  readonly #members: Member[];
  readonly #waiting: Waiter[] = [];
  readonly #failures: Record<FailureKind, number> = { error: 0, timeout: 0, memory: 0, fenced: 0 };
  readonly #policy: FastPathPolicy;
  /** Fast-path calls gathered during this turn of the event loop, run together at its end. */
  #batch: Call[] = [];
  #batchScheduled = false;
  readonly #runBatchNow = (): void => this.#runBatch(); // one closure for every batch
  /** Calls not yet settled (to settle them all on dispose). */
  readonly #live = new LiveCalls();
  #sweeper: ReturnType<typeof setInterval> | undefined;
  /** A sweep whose timer ran, waiting for the results that came meanwhile to be read (see #sweepAfterReads). */
  #sweepSoon: NodeJS.Immediate | undefined;
  /**
   * The sweep runs in the check phase after its timer, not in the timer: an event loop that gets the CPU back late
   * (descheduled, or held) runs its timers before it reads what came meanwhile, and calls whose isolate thread had
   * delivered their results in time, or whose store had answered, were failed at their deadline (a 451, the isolate
   * watched as overdue). Between the two the poll phase takes those results.
   */
  readonly #sweepAfterReads = (): void => {
    this.#sweepSoon ??= setImmediate(() => {
      this.#sweepSoon = undefined;
      this.#sweep();
    });
  };
  #abandoned = 0;
  /** Isolates still running a call past its deadline, watched by the sweep until they stop or are abandoned. */
  #overdue: Overdue[] = [];
  #disposed = false;
  /** Teardowns of isolates replaced by a rebuild (see #retire). */
  readonly #retiring = new Set<Promise<void>>();
  /** Isolate time per client lately: who goes first when calls queue (see #nextWaiter). */
  readonly #shares = new ClientShares();
  /** Isolates one client may hold at once (see SandboxOptions.isolatesPerClient). */
  readonly #perClient: number;

  private constructor(scripts: readonly ScriptSource[], options: SlotOptions, slots: IsolateSlot[], fastPathMs: number, perClient: number, standIns: readonly HookName[]) {
    this.#perClient = perClient;
    this.#standIns = new Map(standIns.filter((h) => !scripts.some((s) => s.hook === h)).map((h) => [h, `${STAND_IN_FILE} ${h}`]));
    this.#policy = new FastPathPolicy(fastPathMs, (hook, message) => this.#log(this.#scripts.get(hook)?.file ?? '(sandbox)', 'warn', message));
    this.#scripts = new Map(scripts.map((s) => [s.hook, s]));
    this.#options = options;
    this.#members = slots.map((slot, index) => ({ index, slot, state: 'idle', calls: 0, failures: 0, rebuilds: 0, retryAt: 0, epoch: 0, hook: null, client: null, since: 0 }));
    for (const m of this.#members) this.#listen(m);
  }

  /** Hear from a member's slot between calls: a delivery ended (it may be handed over), its isolate was lost. */
  #listen(member: Member): void {
    const slot = member.slot;
    if (!slot) return;
    slot.listener = {
      delivered: () => {
        if (member.slot === slot && member.state === 'idle' && !this.#disposed) this.#handOver(member);
      },
      lost: () => {
        if (member.slot === slot && member.state === 'idle' && !this.#disposed) {
          this.#log('(sandbox)', 'warn', `isolate ${member.index} was lost while calls waited for host operations; rebuilding it`);
          void this.#rebuild(member);
        }
      },
    };
  }

  /**
   * Validate and compile every script into every isolate. Rejects with ScriptErrors (all of them) when a
   * script does not compile, imports something, throws or hangs at top level or has no default function
   * export; within the top level's time limit (max(1000, timeoutMs)) plus LOAD_SLACK_MS per script.
   */
  static async create(options: SandboxOptions): Promise<Sandbox> {
    const scripts = [...options.scripts];
    const slotOptions: SlotOptions = {
      timeoutMs: positiveInteger('timeoutMs', options.timeoutMs ?? 100, 1),
      memoryLimitMb: positiveInteger('memoryLimitMb', options.memoryLimitMb ?? 32, 8),
      host: withLogBudget(options.host, options.shadow === true),
      ...(options.shadow ? { shadow: true } : {}),
    };
    const size = positiveInteger('isolates', options.isolates ?? 2, 1);
    const perClient = positiveInteger('isolatesPerClient', options.isolatesPerClient ?? Math.ceil(size / 2), 1);
    const fastPathMs = options.fastPathMs ?? 5;
    const standIns = options.standIns ?? [];
    if (!Number.isInteger(fastPathMs) || fastPathMs < 0) throw new RangeError(`sandbox fastPathMs must be an integer ≥ 0, got ${fastPathMs}`);
    if (scripts.length === 0) return new Sandbox(scripts, slotOptions, [], fastPathMs, perClient, standIns); // nothing to run: no isolates

    slotOptions.runningId = runningCall.register(scripts, options.shadow === true);
    try {
      const first = await IsolateSlot.build(scripts, slotOptions, true);
      if (!first.slot) {
        await teardownGrace(); // the caller may well exit on this error
        throw new ScriptErrors(first.errors);
      }
      const rest = await Promise.allSettled(Array.from({ length: size - 1 }, () => IsolateSlot.build(scripts, slotOptions)));
      const slots = [first.slot];
      let problem: unknown = null;
      for (const r of rest) {
        if (r.status === 'rejected') problem ??= r.reason;
        else if (r.value.slot) slots.push(r.value.slot);
        else problem ??= new ScriptErrors(r.value.errors); // a top level that behaves differently the second time
      }
      if (problem !== null) {
        await Promise.all(slots.map((s) => s.dispose()));
        await teardownGrace();
        throw problem;
      }
      return new Sandbox(scripts, slotOptions, slots, fastPathMs, perClient, standIns);
    } catch (e) {
      runningCall.unregister(slotOptions.runningId);
      throw e;
    }
  }

  /** Whether a script implements `hook`; callers skip the sandbox entirely when not. */
  has(hook: HookName): boolean {
    return this.#scripts.has(hook) || this.#standIns.has(hook);
  }

  /** The file of `hook`'s script (for errors about what it returned), undefined when there is none. */
  scriptFile(hook: HookName): string | undefined {
    return this.#scripts.get(hook)?.file ?? this.#standIns.get(hook);
  }

  get hooks(): HookName[] {
    return [...this.#scripts.keys(), ...this.#standIns.keys()];
  }

  /** Isolates given up on so far while a call was still running on them (as stats().abandoned, without its reads). */
  get abandoned(): number {
    return this.#abandoned;
  }

  /**
   * Call `hook`'s script with a copy of `ctx` (taken when the call reaches an isolate: the caller must not
   * change `ctx` before the call settles). With `connectionKey`, `ctx.connection` is kept frozen in
   * the isolate under that key and copied again only for a new key (the caller changes the key whenever
   * anything in it changes). Resolves with a copy of what it returned (undefined when
   * nothing); rejects with a ScriptFailure when it throws, times out, exhausts memory or returns
   * something that is not plain data — in every case within timeoutMs + DEADLINE_SLACK_MS of this call,
   * waiting for an isolate included.
   */
  invoke(hook: HookName, ctx: object, connectionId: string | null, connectionKey?: string): Promise<unknown> {
    if (this.#disposed) return Promise.reject(new Error('the sandbox has been disposed'));
    const script = this.#scripts.get(hook);
    if (!script) return this.#standIns.has(hook) ? Promise.resolve(undefined) : Promise.reject(new Error(`no script for hook ${hook}`));
    if (runningCall.isFenced(hook, script.file, this.#options.shadow === true)) {
      this.#failures.fenced++;
      return Promise.reject(new ScriptFailure('fenced', hook, script.file, null, null,
        'this script made its worker process crash or hang repeatedly; it runs again once the file changes'));
    }
    // ctx.connection crosses apart: once per key when there is one, and its certificate once per isolate.
    let shared: SharedConnection | undefined;
    let own = ctx;
    if ('connection' in ctx && ctx.connection !== null && typeof ctx.connection === 'object') {
      const { connection, ...rest } = ctx as { connection: { clientCertificate?: unknown } };
      own = rest;
      const cert = connection.clientCertificate as { fingerprint?: { sha256?: unknown }; verified?: unknown; verifyError?: unknown; verifyErrorCode?: unknown } | null | undefined;
      shared = cert && typeof cert.fingerprint?.sha256 === 'string'
        ? { key: connectionKey, connection, certificateKey: certificateKey(cert as CertificateFacts), certificate: cert }
        : { key: connectionKey, connection, certificateKey: undefined, certificate: undefined };
    }
    // No closures per call: the promise's own functions are kept, and the call settles through #resolve/#reject.
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    const call: Call = {
      hook, ctx: own, connectionId, shared, journal: new OperationJournal(), file: script.file,
      deadlineAt: performance.now() + this.#options.timeoutMs + DEADLINE_SLACK_MS - DEADLINE_SWEEP_MS,
      done: false, runningOn: null, cancel: undefined, client: undefined, rerun: false, prev: null, next: null, fulfil: resolve, fail: reject,
    };
    this.#live.add(call);
    this.#sweeper ??= setInterval(this.#sweepAfterReads, DEADLINE_SWEEP_MS);
    const budget = this.#policy.budgetFor(hook);
    if (budget > 0) {
      this.#batch.push(call);
      this.#scheduleBatch();
    } else {
      void this.#invokeAlone(call, budget);
    }
    return promise;
  }

  /** The call's value reaches its caller, unless the call is settled already. */
  #resolve(call: Call, value: unknown): void {
    // A re-run that asked other things than its stopped attempt: what it decided rests on unknown counts.
    if (call.journal.diverged !== null) {
      if (!call.done) this.#failures.error++; // a value, not yet counted as a failure
      this.#reject(call, new ScriptFailure('error', call.hook, call.file, null, null, call.journal.diverged));
      return;
    }
    if (this.#settle(call)) call.fulfil(value);
  }

  /** The call fails with `error`, unless it is settled already. */
  #reject(call: Call, error: unknown): void {
    if (!this.#settle(call)) return;
    if (call.journal.diverged !== null) {
      this.#log(call.file, 'error', `${call.hook}: ${call.journal.diverged}`, call.connectionId);
      error = new ScriptFailure('error', call.hook, call.file, null, null, call.journal.diverged);
    }
    call.fail(error);
  }

  /** Mark `call` settled; false when it already was (its deadline came first, or the sandbox was disposed). */
  #settle(call: Call): boolean {
    if (call.done) return false;
    call.done = true;
    this.#live.remove(call);
    return true;
  }

  /** Fail the calls past their deadline; stop checking while there are none. */
  #sweep(): void {
    const now = performance.now();
    for (const call of this.#live.all()) if (call.deadlineAt <= now) this.#expire(call);
    if (this.#overdue.length > 0) this.#watchOverdue(now);
    if (this.#live.size === 0 && this.#overdue.length === 0 && this.#sweeper) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  /** The call's deadline has come: fail it, and watch the isolate it is still running on, if any. */
  #expire(call: Call): void {
    if (call.done) return;
    const { timeoutMs } = this.#options;
    const on = call.runningOn;
    this.#reject(call, new ScriptFailure('timeout', call.hook, call.file, null, null, on
      ? `no result within ${timeoutMs} ms + ${DEADLINE_SLACK_MS} ms: the script had not stopped`
      : call.cancel
        ? `did not finish within ${timeoutMs} ms + ${DEADLINE_SLACK_MS} ms (a returned promise never settled)`
        : `no isolate became free within ${timeoutMs} ms + ${DEADLINE_SLACK_MS} ms`));
    this.#failures.timeout++;
    call.journal.over = true; // an isolate still running it, or a promise still waiting, starts nothing more
    const waiting = this.#waiting.findIndex((w) => w.call === call);
    if (waiting >= 0) this.#waiting.splice(waiting, 1);
    this.#batch = this.#batch.filter((c) => c !== call);
    call.cancel?.(); // waiting for a host operation, not running: nothing to abandon
    if (on && on.member.epoch === on.epoch && !this.#disposed) {
      on.member.failures++;
      // Its member stays busy until the call comes back (#invokeAlone releases it) or it is abandoned.
      const threadsAt = otherThreadsNow();
      this.#overdue.push({ call, member: on.member, epoch: on.epoch, threadsAt, cpuAt: threadsAt ? 0 : otherThreadsCpuMicros(), since: performance.now() });
    }
  }

  /**
   * Abandon and replace the overdue isolates shown stuck: other threads had STUCK_CPU_MS of CPU time and it did not
   * stop, or OVERDUE_CAP_MS passed. One whose call came back meanwhile was only descheduled: it serves on.
   */
  #watchOverdue(now: number): void {
    let threads: Map<number, ThreadReading> | null | undefined; // read once a sweep, when needed
    let cpu: number | undefined;
    this.#overdue = this.#overdue.filter((o) => {
      if (this.#disposed || o.member.epoch !== o.epoch || o.call.runningOn === null) return false; // back, or replaced
      let stuck: boolean;
      if (o.threadsAt) {
        threads ??= otherThreadsNow();
        stuck = threads !== null && shownStuck(o.threadsAt, threads, STUCK_CPU_MS * 1000);
      } else {
        cpu ??= otherThreadsCpuMicros();
        stuck = (cpu - o.cpuAt) / 1000 >= STUCK_CPU_MS;
      }
      const overdueMs = now - o.since;
      if (!stuck && overdueMs < OVERDUE_CAP_MS) return true;
      const why = !stuck ? `it did not stop within ${OVERDUE_CAP_MS} ms after`
        : o.threadsAt ? `its thread had ${STUCK_CPU_MS} ms of CPU time since and it did not stop`
          : `other threads had ${STUCK_CPU_MS} ms of CPU time since and it did not stop`;
      this.#reportAbandoned(o, `${why}; it is abandoned and replaced`);
      void this.#rebuild(o.member);
      return false;
    });
  }

  /**
   * An overdue isolate is given up while it still runs its call: counted, and its script named for the process's
   * fence (its thread may be parked for good: unrecoverable.ts).
   */
  #reportAbandoned(o: Overdue, what: string): void {
    this.#abandoned++;
    reportAbandonedRunning(this.#options.runningId === undefined ? undefined : runningCall.scriptOf(this.#options.runningId, o.call.hook));
    this.#log(o.call.file, 'error', `isolate ${o.member.index} was still running ${o.call.hook} at its deadline ` +
      `(${this.#options.timeoutMs} ms + ${DEADLINE_SLACK_MS} ms) and ${what}`, o.call.connectionId);
  }

  /** What is left of a call's time for the isolate: its full timeoutMs unless waiting used up part of the slack. */
  #budgetLeft(call: Call): number {
    const left = Math.floor(call.deadlineAt + DEADLINE_SWEEP_MS - performance.now() - DEADLINE_SLACK_MS / 2);
    return Math.max(1, Math.min(this.#options.timeoutMs, left));
  }

  async #invokeAlone(call: Call, fastPathMs: number, overranBefore = false): Promise<void> {
    const { hook, file } = call;
    let member: Member;
    try {
      member = await this.#acquire(call);
    } catch (e) {
      this.#reject(call, new ScriptFailure('error', hook, file, null, null, (e as Error).message));
      return;
    }
    const epoch = member.epoch;
    if (call.done) {
      this.#release(member, file, epoch);
      return;
    }
    const slot = member.slot!;
    call.runningOn = { member, epoch };
    member.calls++;
    if (overranBefore) this.#policy.stats.calls++;
    let again = false;
    try {
      if (fastPathMs > 0) {
        this.#policy.stats.calls++;
        this.#policy.stats.batches++;
      }
      const { value, overran } = await slot.call(hook, call.ctx, call.connectionId, fastPathMs, call.shared, this.#budgetLeft(call), call.journal);
      if (overran) this.#policy.overran(hook, slot.stoppedCpuMs);
      this.#resolve(call, value);
    } catch (e) {
      // Another call's code lost the isolate while this one waited on it: from the start, on another.
      if (e instanceof RunAgain && !call.done) again = true;
      else {
        if (!call.done) this.#countFailure(member, e);
        this.#reject(call, e);
      }
    } finally {
      call.runningOn = null; // back: an overdue watch of it ends (#watchOverdue)
      this.#release(member, file, epoch);
    }
    if (again) {
      call.runningOn = null; // until it runs again: its deadline abandons no isolate meanwhile
      call.rerun = true;
      void this.#invokeAlone(call, 0);
    }
  }

  /**
   * Fast-path calls wait for the end of the turn (the check phase, where replies also leave: see
   * engine/smtp/reply-batch.ts) and then enter the isolate together: one entry instead of one per call.
   */
  #scheduleBatch(): void {
    if (this.#batchScheduled) return;
    this.#batchScheduled = true;
    setImmediate(this.#runBatchNow);
  }

  #runBatch(): void {
    this.#batchScheduled = false;
    let taken: Call[];
    if (this.#batch.length <= MAX_BATCH) {
      taken = this.#batch;
      this.#batch = [];
    } else {
      taken = this.#batch.splice(0, MAX_BATCH);
      this.#scheduleBatch();
    }
    if (taken.length === 0) return;
    // An idle member now, as nearly always: the batch runs in this turn, without a promise to wait for.
    const member = this.#idleMember();
    if (member) {
      this.#runBatchOn(member, taken);
      return;
    }
    this.#acquire(null).then((m) => this.#runBatchOn(m, taken), (e: unknown) => {
      for (const q of taken) this.#reject(q, new ScriptFailure('error', q.hook, q.file, null, null, (e as Error).message));
    });
  }

  #runBatchOn(member: Member, taken: Call[]): void {
    const epoch = member.epoch;
    const batch = withoutDone(taken); // a deadline may have come while the batch waited
    if (batch.length === 0) {
      this.#release(member, '(sandbox)', epoch);
      return;
    }
    const slot = member.slot!;
    let settled: BatchSettled[];
    this.#policy.stats.batches++;
    try {
      settled = slot.callBatch(batch, this.#policy.budgetMs);
    } catch (e) {
      settled = batch.map((q) => ({ failure: new ScriptFailure('error', q.hook, q.file, null, null, (e as Error).message) }));
    }
    let again: Call[] | null = null;
    let alone: Array<{ q: Call; overran: boolean }> | null = null;
    for (let i = 0; i < batch.length; i++) {
      const q = batch[i]!;
      const s = settled[i] ?? 'alone';
      // A call that started operations runs again alone: its operations are then told apart from other
      // calls' (in a batch, its continuations' would be mixed with theirs), see operation-journal.ts.
      if (s === 'again' && !q.journal.started) (again ??= []).push(q);
      else if (s === 'again') (alone ??= []).push({ q, overran: false });
      else if (s === 'alone' || s === 'overran') (alone ??= []).push({ q, overran: s === 'overran' });
      else {
        member.calls++;
        this.#policy.stats.calls++;
        if ('failure' in s) this.#failed(member, q, s.failure);
        else if ('later' in s) this.#awaitLater(member, q, s);
        else this.#resolve(q, s.value);
      }
    }
    this.#release(member, '(sandbox)', epoch);
    if (alone) {
      for (const { q, overran } of alone) {
        if (overran) this.#policy.overran(q.hook, slot.stoppedCpuMs);
        void this.#invokeAlone(q, 0, overran);
      }
    }
    if (again) {
      this.#batch.unshift(...again);
      this.#scheduleBatch();
    }
  }

  /** A call of a batch failed. */
  #failed(member: Member, q: Call, e: unknown): void {
    if (!q.done) this.#countFailure(member, e);
    this.#reject(q, e);
  }

  /** A call of a batch whose promise waits for host operations (a store): the slot serves other calls meanwhile. */
  #awaitLater(member: Member, q: Call, s: { later: Promise<unknown>; cancel(): void }): void {
    q.cancel = s.cancel;
    s.later.then((value) => this.#resolve(q, value), (e: unknown) => {
      if (!(e instanceof RunAgain)) return this.#failed(member, q, e);
      // The fast-path entry that delivered its answers was stopped (or its isolate lost): from the start, alone.
      q.cancel = undefined;
      if (e.overran) this.#policy.overran(q.hook, e.cpuMs);
      else q.rerun = true; // a bystander of another call's failure, not slow by itself
      void this.#invokeAlone(q, 0, e.overran);
    });
  }

  #countFailure(member: Member, e: unknown): void {
    member.failures++;
    this.#failures[e instanceof ScriptFailure ? e.kind : 'error']++;
  }

  async stats(): Promise<SandboxStats> {
    const isolates = await Promise.all(this.#members.map(async (m): Promise<IsolateStats> => ({
      index: m.index,
      state: m.state,
      heapUsedBytes: m.slot && (m.state === 'idle' || m.state === 'busy') ? await m.slot.heapUsed() : null,
      calls: m.calls,
      failures: m.failures,
      rebuilds: m.rebuilds,
    })));
    return {
      isolates,
      queued: this.#waiting.length,
      calls: isolates.reduce((n, i) => n + i.calls, 0),
      failures: { ...this.#failures },
      rebuilds: isolates.reduce((n, i) => n + i.rebuilds, 0),
      abandoned: this.#abandoned,
      fastPath: { ...this.#policy.stats },
    };
  }

  /**
   * Release every isolate, now; calls still waiting or running reject. The promise (safe to ignore)
   * resolves once isolated-vm has had time to tear the isolates down (those replaced earlier too), counted
   * from when their threads came back: await it before process.exit().
   */
  dispose(): Promise<void> {
    if (this.#disposed) return Promise.resolve();
    this.#disposed = true;
    // Overdue isolates not yet shown stuck are disposed below while they run (a reload's old generation, disposed as
    // its last session ends just after such a deadline): given up as the sweep would, or the process, replaced for a
    // thread one of them parked, blamed no script and its supervisor never fenced it.
    for (const o of this.#overdue) {
      if (o.member.epoch === o.epoch && o.call.runningOn !== null) this.#reportAbandoned(o, 'the sandbox was disposed meanwhile');
    }
    this.#overdue = [];
    for (const w of this.#waiting.splice(0)) w.refuse(new Error('the sandbox has been disposed'));
    for (const q of this.#batch.splice(0)) this.#reject(q, new ScriptFailure('error', q.hook, q.file, null, null, 'the sandbox has been disposed'));
    const quiet = [...this.#retiring];
    for (const m of this.#members) {
      if (m.slot) quiet.push(m.slot.dispose());
      m.slot = null;
      m.state = 'disposed';
    }
    // Calls running on an isolate that cannot be stopped would otherwise wait for their deadline.
    for (const q of this.#live.all()) this.#reject(q, new ScriptFailure('error', q.hook, q.file, null, null, 'the sandbox was disposed during the call'));
    clearInterval(this.#sweeper);
    if (this.#sweepSoon) clearImmediate(this.#sweepSoon);
    this.#sweepSoon = undefined;
    if (this.#options.runningId !== undefined) runningCall.unregister(this.#options.runningId);
    return this.#members.length ? Promise.all(quiet).then(teardownGrace) : Promise.resolve();
  }

  /** A replaced isolate's teardown, until its threads have come back: dispose() waits for it too. */
  #retire(quiet: Promise<void>): void {
    this.#retiring.add(quiet);
    void quiet.then(() => this.#retiring.delete(quiet));
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /**
   * Sandbox events go to the same log as scripts' lines; a failing logger must not break the pool. `connectionId`:
   * the event is of one call's (told after its verdict, as often as not: its deadline answered it), so its line
   * carries the session's cid.
   */
  #log(file: string, level: LogLevel, message: string, connectionId: string | null = null): void {
    try {
      this.#options.host.log(connectionId, file, level, message);
    } catch {
      // best effort
    }
  }

  /** An idle member, now or when one is free; `call` (null for a batch) is dropped from the queue at its deadline. */
  #acquire(call: Call | null): Promise<Member> {
    if (this.#disposed) return Promise.reject(new Error('the sandbox has been disposed'));
    const idle = this.#atLimit(call) ? null : this.#idleMember();
    if (idle) {
      this.#hold(idle, call);
      return Promise.resolve(idle);
    }
    if (!this.#members.some((m) => m.state === 'busy' || m.state === 'rebuilding' || m.state === 'idle')) {
      const now = performance.now();
      const retry = this.#members.filter((m) => m.state === 'broken' && m.retryAt <= now);
      if (retry.length === 0) return Promise.reject(new Error('no isolate is available: rebuilding them failed'));
      for (const m of retry) void this.#rebuild(m);
    }
    return new Promise((grant, refuse) => this.#waiting.push({ call, grant, refuse }));
  }

  /**
   * An idle member, now taken (busy), or null. The first idle isolate, not the next in turn: most calls finish
   * on the fast path, so one isolate takes nearly all of them and stays warm in the CPU caches, and each
   * connection's facts cross once. The others take the calls that overlap (on isolate threads). A slot
   * delivering answers on an isolate thread is not entered: a fast-path entry would block on it.
   */
  #idleMember(): Member | null {
    if (this.#disposed) return null;
    // Indexed loops here and in #release: they run per batch, and an array iterator is an object per loop.
    for (let i = 0; i < this.#members.length; i++) {
      const m = this.#members[i]!;
      if (m.state === 'idle' && !m.slot!.delivering) {
        m.state = 'busy';
        return m;
      }
    }
    return null;
  }

  /** The call that took `member` at `epoch` is over (a no-op when the member was abandoned since). */
  #release(member: Member, file: string, epoch: number): void {
    if (this.#disposed || member.epoch !== epoch) return;
    for (let i = 0; i < this.#members.length; i++) {
      const m = this.#members[i]!;
      if (m.state === 'broken' && m.retryAt <= performance.now()) void this.#rebuild(m);
    }
    if (member.slot!.lost) {
      this.#log(file, 'warn', `isolate ${member.index} was lost (memory limit or a call that never settled); rebuilding it`);
      void this.#rebuild(member);
      return;
    }
    this.#handOver(member);
  }

  /** Hand idle isolates to waiting calls that may now take them (their client's own isolate was given up on). */
  #offerIdle(): void {
    for (let i = 0; i < this.#members.length && this.#waiting.length > 0; i++) {
      const m = this.#members[i]!;
      if (m.state === 'idle' && !this.#disposed) this.#handOver(m);
    }
  }

  #handOver(member: Member): void {
    this.#unhold(member);
    const next = member.slot?.delivering ? undefined : this.#nextWaiter(); // else when the delivery ends
    if (next) {
      member.state = 'busy';
      this.#hold(member, next.call);
      next.grant(member);
    } else {
      member.state = 'idle';
    }
  }

  /** Isolates running a call of `hook` alone now. */
  #held(hook: HookName): number {
    let held = 0;
    for (let i = 0; i < this.#members.length; i++) {
      const m = this.#members[i]!;
      if (m.state === 'busy' && m.hook === hook) held++;
    }
    return held;
  }

  /** `member` now runs `call` alone (null: a batch, of no one hook or client). */
  #hold(member: Member, call: Call | null): void {
    member.hook = call?.hook ?? null;
    member.client = call === null ? null : this.#clientOf(call);
    member.since = member.client === null ? 0 : performance.now();
  }

  /** `member` no longer runs the call it held: its client is charged the time. */
  #unhold(member: Member): void {
    if (member.client !== null) {
      const now = performance.now();
      this.#shares.charge(member.client, now - member.since, now);
    }
    member.hook = null;
    member.client = null;
  }

  #clientOf(call: Call): string | null {
    if (call.client === undefined) call.client = clientOf(call.shared?.connection);
    return call.client;
  }

  /** `client`'s isolate time lately, its calls running now included. */
  #usage(client: string, now: number): number {
    let use = this.#shares.usage(client, now);
    for (let i = 0; i < this.#members.length; i++) {
      const m = this.#members[i]!;
      if (m.client === client) use += now - m.since;
    }
    return use;
  }

  /**
   * The waiter a freed isolate goes to, removed from the queue. First a call run again because another call's
   * code lost or stopped its isolate (it has waited through someone else's failure already). Then the call whose
   * hook holds the fewest isolates now (a batch, fast-path calls of any hooks that hold it for fastPathMs at most,
   * counts as none): clients flooding one hook whose script runs to its time limit (up to timeoutMs a call, on
   * isolate threads) would otherwise hold every isolate and fill the queue, and the other hooks' calls, queued
   * behind them, would fail at their deadlines in turn; this way they wait for one call at most. Among those, the
   * call whose client has had the least isolate time lately (client-shares.ts): within one hook too, one client's
   * heavy calls make another's wait for one of them at most, not for the queue of them. Then first come.
   */
  #nextWaiter(): Waiter | undefined {
    const waiting = this.#waiting;
    if (waiting.length === 0) return undefined;
    if (waiting.length === 1) return this.#atLimit(waiting[0]!.call) ? undefined : waiting.shift();
    let best = -1;
    let bestRank = Infinity;
    let bestUse = Infinity;
    let now = -1;
    for (let i = 0; i < waiting.length; i++) {
      const call = waiting[i]!.call;
      if (this.#atLimit(call)) continue; // it waits for one of its client's own isolates
      const rank = call === null ? 0 : call.rerun ? -1 : this.#held(call.hook);
      if (rank > bestRank) continue;
      const client = call === null ? null : this.#clientOf(call);
      let use = 0;
      if (client !== null) {
        if (now < 0) now = performance.now();
        use = this.#usage(client, now);
      }
      if (rank < bestRank || use < bestUse) {
        best = i;
        bestRank = rank;
        bestUse = use;
      }
    }
    return best < 0 ? undefined : waiting.splice(best, 1)[0];
  }

  /**
   * Whether `call`'s client holds its share of isolates already (isolatesPerClient): then it waits for one of
   * them, even with an isolate idle. A client's calls that run to their time limit hold isolates for that long,
   * and fair order among waiting calls (#nextWaiter) only helps a call that is already waiting: another client's
   * call, arriving while this one held every isolate, still waited up to timeoutMs — and on a busy machine, with
   * the CPU shared by the isolate threads spinning for that one client, ran out of its deadline (451). This way
   * the rest of the pool is always free for other clients. Batches (call null: fast-path calls, which hold an
   * isolate for fastPathMs at most) and calls of no client (predelivery) are not limited.
   */
  #atLimit(call: Call | null): boolean {
    if (call === null) return false;
    const client = this.#clientOf(call);
    if (client === null) return false;
    let held = 0;
    for (let i = 0; i < this.#members.length; i++) {
      const m = this.#members[i]!;
      if (m.client === client && ++held >= this.#perClient) return true;
    }
    return false;
  }

  async #rebuild(member: Member): Promise<void> {
    member.epoch++;
    // Returns at once, even when a call is stuck in it (isolated-vm does not wait); calls waiting on it run again.
    if (member.slot) this.#retire(member.slot.abandon());
    member.slot = null;
    member.state = 'rebuilding';
    // The client whose call lost it (its memory limit, or stuck at its deadline) still holds it until it is rebuilt
    // (#handOver) or given up (broken), and is charged the time: let go now, that client's next call took the other
    // isolate, and another client's call waited for the rebuild — behind a script stuck in a builtin on a loaded
    // machine, each call abandoned one isolate and took the next, and other clients' calls failed at their deadlines.
    member.rebuilds++;
    let built: Awaited<ReturnType<typeof IsolateSlot.build>>;
    try {
      built = await IsolateSlot.build([...this.#scripts.values()], this.#options);
    } catch (e) {
      built = { slot: null, errors: [] };
      this.#log('(sandbox)', 'error', `rebuilding isolate ${member.index} failed: ${(e as Error).message}`);
    }
    if (this.#disposed) {
      if (built.slot) this.#retire(built.slot.dispose());
      return;
    }
    if (built.slot) {
      member.slot = built.slot;
      this.#listen(member);
      this.#handOver(member);
      return;
    }
    for (const e of built.errors) this.#log(e.file, 'error', `rebuilding isolate ${member.index} failed: ${e.toString()}`);
    const client = member.client;
    this.#unhold(member);
    member.state = 'broken';
    if (client !== null) this.#offerIdle(); // a waiting call of its client may take an idle isolate now
    member.retryAt = performance.now() + REBUILD_RETRY_MS;
    if (!this.#members.some((m) => m.state === 'idle' || m.state === 'busy' || m.state === 'rebuilding')) {
      for (const w of this.#waiting.splice(0)) w.refuse(new Error('no isolate is available: rebuilding them failed'));
    }
  }
}

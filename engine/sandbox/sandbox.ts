/**
 * A Sandbox runs one configuration generation's policy scripts on a small pool of isolates: calls go to
 * an idle isolate (or wait for one), a lost isolate is rebuilt, and every failure rejects — fail closed.
 */
import { runningCall } from './running-call.ts';
import type { HookName } from './api/index.ts';
import { ScriptErrors, ScriptFailure, type FailureKind } from './errors.ts';
import type { HostBridge, LogLevel } from './host-callbacks.ts';
import { IsolateSlot, teardownGrace, type BatchCall, type BatchSettled, type SharedConnection, type SlotOptions } from './isolate-slot.ts';
import type { ScriptSource } from './script-source.ts';

export interface SandboxOptions {
  scripts: readonly ScriptSource[];
  /** Time limit of one call, in milliseconds. Default 100. */
  timeoutMs?: number;
  /** Heap limit of each isolate, in MB (isolated-vm's minimum is 8). Default 32. */
  memoryLimitMb?: number;
  /** Isolates in the pool. Default 2. */
  isolates?: number;
  /**
   * How long a call may run on the event-loop thread before it is moved to an isolate thread (see
   * IsolateSlot.call). 0: always on an isolate thread. Default 5.
   */
  fastPathMs?: number;
  host: HostBridge;
}

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
  /**
   * Calls started on the event-loop thread (sandbox.fastPathMs), how many of them outran it and were run
   * again, and in how many entries into an isolate they ran (calls of one turn of the event loop share one).
   */
  fastPath: { calls: number; overruns: number; batches: number };
}

interface Member {
  index: number;
  slot: IsolateSlot | null;
  state: IsolateState;
  calls: number;
  failures: number;
  rebuilds: number;
  /** When a broken member may try to rebuild again. */
  retryAt: number;
}

interface Waiter {
  grant(member: Member): void;
  refuse(error: Error): void;
}

/** A call waiting for the batch of this turn of the event loop. */
interface Queued extends BatchCall {
  file: string;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

/** Calls in one batch at most; more wait for the next (each batch shares one fast-path time limit). */
const MAX_BATCH = 32;

const REBUILD_RETRY_MS = 1000;
/** A hook whose call outran the fast path runs on isolate threads only, for this long. */
const SLOW_HOOK_MS = 60_000;
/**
 * This many overruns of one hook within OVERRUN_WINDOW_MS make it slow. One alone is not enough: a first
 * call (lazy compilation) or a busy machine (the thread descheduled) can overrun a quick script once.
 */
const OVERRUNS_TO_SLOW = 3;
const OVERRUN_WINDOW_MS = 30_000;

function positiveInteger(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min) throw new RangeError(`sandbox ${name} must be an integer ≥ ${min}, got ${value}`);
  return value;
}

export class Sandbox {
  readonly #scripts: ReadonlyMap<HookName, ScriptSource>;
  readonly #options: SlotOptions;
  readonly #members: Member[];
  readonly #waiting: Waiter[] = [];
  readonly #failures: Record<FailureKind, number> = { error: 0, timeout: 0, memory: 0 };
  readonly #fastPathMs: number;
  /** Hooks that outran the fast path, and until when they stay off it. */
  readonly #slowUntil = new Map<HookName, number>();
  /** Recent overruns per hook (times), for OVERRUNS_TO_SLOW. */
  readonly #overrunsAt = new Map<HookName, number[]>();
  readonly #fastPath = { calls: 0, overruns: 0, batches: 0 };
  /** Fast-path calls gathered during this turn of the event loop, run together at its end. */
  readonly #batch: Queued[] = [];
  #batchScheduled = false;
  /** Hooks whose scripts returned a promise: they wait on isolate threads, so they are not batched. */
  readonly #promiseHooks = new Set<HookName>();
  #disposed = false;

  private constructor(scripts: readonly ScriptSource[], options: SlotOptions, slots: IsolateSlot[], fastPathMs: number) {
    this.#fastPathMs = fastPathMs;
    this.#scripts = new Map(scripts.map((s) => [s.hook, s]));
    this.#options = options;
    this.#members = slots.map((slot, index) => ({ index, slot, state: 'idle', calls: 0, failures: 0, rebuilds: 0, retryAt: 0 }));
  }

  /**
   * Validate and compile every script into every isolate. Rejects with ScriptErrors (all of them) when a
   * script does not compile, imports something, throws at top level or has no default function export.
   */
  static async create(options: SandboxOptions): Promise<Sandbox> {
    const slotOptions: SlotOptions = {
      timeoutMs: positiveInteger('timeoutMs', options.timeoutMs ?? 100, 1),
      memoryLimitMb: positiveInteger('memoryLimitMb', options.memoryLimitMb ?? 32, 8),
      host: options.host,
    };
    const size = positiveInteger('isolates', options.isolates ?? 2, 1);
    const fastPathMs = options.fastPathMs ?? 5;
    if (!Number.isInteger(fastPathMs) || fastPathMs < 0) throw new RangeError(`sandbox fastPathMs must be an integer ≥ 0, got ${fastPathMs}`);
    const scripts = [...options.scripts];
    for (const s of scripts) runningCall.register(s.hook, s.file, s.source);
    if (scripts.length === 0) return new Sandbox(scripts, slotOptions, [], fastPathMs); // nothing to run: no isolates

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
      for (const s of slots) s.dispose();
      await teardownGrace();
      throw problem;
    }
    return new Sandbox(scripts, slotOptions, slots, fastPathMs);
  }

  /** Whether a script implements `hook`; callers skip the sandbox entirely when not. */
  has(hook: HookName): boolean {
    return this.#scripts.has(hook);
  }

  get hooks(): HookName[] {
    return [...this.#scripts.keys()];
  }

  /**
   * Call `hook`'s script with a copy of `ctx` (taken when the call reaches an isolate: the caller must not
   * change `ctx` before the call settles). With `connectionKey`, `ctx.connection` is kept frozen in
   * the isolate under that key and copied again only for a new key (the caller changes the key whenever
   * anything in it changes). Resolves with a copy of what it returned (undefined when
   * nothing); rejects with a ScriptFailure when it throws, times out, exhausts memory or returns
   * something that is not plain data.
   */
  async invoke(hook: HookName, ctx: object, connectionId: string | null, connectionKey?: string): Promise<unknown> {
    if (this.#disposed) throw new Error('the sandbox has been disposed');
    const script = this.#scripts.get(hook);
    if (!script) throw new Error(`no script for hook ${hook}`);
    if (runningCall.isFenced(hook, script.file)) {
      throw new ScriptFailure('error', hook, script.file, null, null, 'fenced: this script made its worker process crash or hang repeatedly; it runs again once the file changes');
    }
    // ctx.connection crosses apart: once per key when there is one, and its certificate once per isolate.
    let shared: SharedConnection | undefined;
    let own = ctx;
    if ('connection' in ctx && ctx.connection !== null && typeof ctx.connection === 'object') {
      const { connection, ...rest } = ctx as { connection: { clientCertificate?: unknown } };
      own = rest;
      shared = { key: connectionKey, connection };
      const cert = connection.clientCertificate as { fingerprint?: { sha256?: unknown }; verified?: unknown; verifyError?: unknown; verifyErrorCode?: unknown } | null | undefined;
      if (cert && typeof cert.fingerprint?.sha256 === 'string') {
        shared.certificate = cert;
        // The chain verdict depends on the listener's CA, so it is part of the key.
        shared.certificateKey = `${cert.fingerprint.sha256}/${String(cert.verified)}/${String(cert.verifyError)}/${String(cert.verifyErrorCode)}`;
      }
    }
    const fastPathMs = this.#fastPathFor(hook);
    if (fastPathMs > 0 && !this.#promiseHooks.has(hook)) {
      return new Promise((resolve, reject) => {
        this.#batch.push({ hook, ctx: own, connectionId, shared, file: script.file, resolve, reject });
        this.#scheduleBatch();
      });
    }
    return this.#invokeAlone(hook, own, connectionId, shared, script.file, fastPathMs);
  }

  async #invokeAlone(hook: HookName, ctx: object, connectionId: string | null, shared: SharedConnection | undefined, file: string, fastPathMs: number): Promise<unknown> {
    let member: Member;
    try {
      member = await this.#acquire();
    } catch (e) {
      throw new ScriptFailure('error', hook, file, null, null, (e as Error).message);
    }
    member.calls++;
    try {
      if (fastPathMs > 0) {
        this.#fastPath.calls++;
        this.#fastPath.batches++;
      }
      const { value, overran } = await member.slot!.call(hook, ctx, connectionId, fastPathMs, shared);
      if (overran) this.#markSlow(hook, file);
      return value;
    } catch (e) {
      this.#countFailure(member, e);
      throw e;
    } finally {
      this.#release(member, file);
    }
  }

  /**
   * Fast-path calls wait for the end of the turn (the check phase, where replies also leave: see
   * engine/smtp/reply-batch.ts) and then enter the isolate together: one entry instead of one per call.
   */
  #scheduleBatch(): void {
    if (this.#batchScheduled) return;
    this.#batchScheduled = true;
    setImmediate(() => void this.#runBatch());
  }

  async #runBatch(): Promise<void> {
    this.#batchScheduled = false;
    const batch = this.#batch.splice(0, MAX_BATCH);
    if (this.#batch.length) this.#scheduleBatch();
    if (batch.length === 0) return;
    let member: Member;
    try {
      member = await this.#acquire();
    } catch (e) {
      for (const q of batch) q.reject(new ScriptFailure('error', q.hook, q.file, null, null, (e as Error).message));
      return;
    }
    let settled: BatchSettled[];
    this.#fastPath.batches++;
    try {
      settled = member.slot!.callBatch(batch, this.#fastPathMs);
    } catch (e) {
      settled = batch.map((q) => ({ failure: new ScriptFailure('error', q.hook, q.file, null, null, (e as Error).message) }));
    }
    const again: Queued[] = [];
    const alone: Array<{ q: Queued; overran: boolean }> = [];
    const later: Array<Promise<unknown>> = [];
    const failed = (q: Queued, e: unknown): void => {
      this.#countFailure(member, e);
      q.reject(e);
    };
    for (const [i, q] of batch.entries()) {
      const s = settled[i] ?? 'alone';
      if (s === 'again') again.push(q);
      else if (s === 'alone' || s === 'overran') alone.push({ q, overran: s === 'overran' });
      else {
        member.calls++;
        this.#fastPath.calls++;
        if ('failure' in s) failed(q, s.failure);
        else if ('later' in s) {
          // A script that returns a promise waits on an isolate thread; its hook skips batches from now on.
          this.#promiseHooks.add(q.hook);
          later.push(s.later.then(q.resolve, (e: unknown) => failed(q, e)));
        } else q.resolve(s.value);
      }
    }
    if (later.length) void Promise.all(later).then(() => this.#release(member, '(sandbox)'));
    else this.#release(member, '(sandbox)');
    for (const { q, overran } of alone) {
      if (overran) {
        this.#fastPath.calls++;
        this.#markSlow(q.hook, q.file);
      }
      this.#invokeAlone(q.hook, q.ctx, q.connectionId, q.shared, q.file, 0).then(q.resolve, q.reject);
    }
    if (again.length) {
      this.#batch.unshift(...again);
      this.#scheduleBatch();
    }
  }

  #countFailure(member: Member, e: unknown): void {
    member.failures++;
    this.#failures[e instanceof ScriptFailure ? e.kind : 'error']++;
  }

  #fastPathFor(hook: HookName): number {
    if (this.#fastPathMs === 0) return 0;
    const until = this.#slowUntil.get(hook);
    if (until === undefined) return this.#fastPathMs;
    if (Date.now() < until) return 0;
    this.#slowUntil.delete(hook);
    return this.#fastPathMs;
  }

  #markSlow(hook: HookName, file: string): void {
    this.#fastPath.overruns++;
    const now = Date.now();
    const recent = (this.#overrunsAt.get(hook) ?? []).filter((t) => now - t < OVERRUN_WINDOW_MS);
    recent.push(now);
    this.#overrunsAt.set(hook, recent);
    if (recent.length < OVERRUNS_TO_SLOW || this.#slowUntil.has(hook)) return;
    this.#overrunsAt.delete(hook);
    this.#slowUntil.set(hook, now + SLOW_HOOK_MS);
    this.#log(file, 'warn', `${OVERRUNS_TO_SLOW} ${hook} calls within ${OVERRUN_WINDOW_MS / 1000} s ran longer than the ${this.#fastPathMs} ms fast path ` +
      `and were run again on an isolate thread; ${hook} calls go straight there for the next ${SLOW_HOOK_MS / 1000} s`);
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
      fastPath: { ...this.#fastPath },
    };
  }

  /**
   * Release every isolate, now; calls still waiting or running reject. The promise (safe to ignore)
   * resolves once isolated-vm has had time to tear the isolates down: await it before process.exit().
   */
  dispose(): Promise<void> {
    if (this.#disposed) return Promise.resolve();
    this.#disposed = true;
    for (const w of this.#waiting.splice(0)) w.refuse(new Error('the sandbox has been disposed'));
    for (const q of this.#batch.splice(0)) q.reject(new ScriptFailure('error', q.hook, q.file, null, null, 'the sandbox has been disposed'));
    for (const m of this.#members) {
      m.slot?.dispose();
      m.slot = null;
      m.state = 'disposed';
    }
    return this.#members.length ? teardownGrace() : Promise.resolve();
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Sandbox events go to the same log as scripts' lines; a failing logger must not break the pool. */
  #log(file: string, level: LogLevel, message: string): void {
    try {
      this.#options.host.log(null, file, level, message);
    } catch {
      // best effort
    }
  }

  #acquire(): Promise<Member> {
    if (this.#disposed) return Promise.reject(new Error('the sandbox has been disposed'));
    // The first idle isolate, not the next in turn: most calls finish on the fast path, so one isolate
    // takes nearly all of them and stays warm in the CPU caches, and each connection's facts cross once.
    // The others take the calls that overlap (on isolate threads).
    for (const m of this.#members) {
      if (m.state === 'idle') {
        m.state = 'busy';
        return Promise.resolve(m);
      }
    }
    if (!this.#members.some((m) => m.state === 'busy' || m.state === 'rebuilding')) {
      const now = Date.now();
      const retry = this.#members.filter((m) => m.state === 'broken' && m.retryAt <= now);
      if (retry.length === 0) return Promise.reject(new Error('no isolate is available: rebuilding them failed'));
      for (const m of retry) void this.#rebuild(m);
    }
    return new Promise((grant, refuse) => this.#waiting.push({ grant, refuse }));
  }

  #release(member: Member, file: string): void {
    if (this.#disposed) return;
    const now = Date.now();
    for (const m of this.#members) if (m.state === 'broken' && m.retryAt <= now) void this.#rebuild(m);
    if (member.slot!.lost) {
      this.#log(file, 'warn', `isolate ${member.index} was lost (memory limit or a call that never settled); rebuilding it`);
      void this.#rebuild(member);
      return;
    }
    this.#handOver(member);
  }

  #handOver(member: Member): void {
    const next = this.#waiting.shift();
    if (next) {
      member.state = 'busy';
      next.grant(member);
    } else {
      member.state = 'idle';
    }
  }

  async #rebuild(member: Member): Promise<void> {
    member.slot?.dispose();
    member.slot = null;
    member.state = 'rebuilding';
    member.rebuilds++;
    let built: Awaited<ReturnType<typeof IsolateSlot.build>>;
    try {
      built = await IsolateSlot.build([...this.#scripts.values()], this.#options);
    } catch (e) {
      built = { slot: null, errors: [] };
      this.#log('(sandbox)', 'error', `rebuilding isolate ${member.index} failed: ${(e as Error).message}`);
    }
    if (this.#disposed) {
      built.slot?.dispose();
      return;
    }
    if (built.slot) {
      member.slot = built.slot;
      this.#handOver(member);
      return;
    }
    for (const e of built.errors) this.#log(e.file, 'error', `rebuilding isolate ${member.index} failed: ${e.toString()}`);
    member.state = 'broken';
    member.retryAt = Date.now() + REBUILD_RETRY_MS;
    if (!this.#members.some((m) => m.state === 'idle' || m.state === 'busy' || m.state === 'rebuilding')) {
      for (const w of this.#waiting.splice(0)) w.refuse(new Error('no isolate is available: rebuilding them failed'));
    }
  }
}

/**
 * One isolate with one long-lived context holding every script of a generation: built (and validated)
 * once, then called many times, one call at a time. A slot whose isolate is lost is replaced, not repaired.
 */
import type ivm from 'isolated-vm';
import type { HookName } from './api/index.ts';
import { ScriptError, ScriptFailure } from './errors.ts';
import { hostCallbacks, type CurrentRun, type HostBridge } from './host-callbacks.ts';
import { installRuntime, type CallWire, type EntryWire, type RunOutcome, type RuntimeHandle } from './isolate-runtime.ts';
import { defaultExportPosition, frameIn, importPosition, splitCompileMessage, type Position } from './locations.ts';
import type { ScriptSource } from './script-source.ts';
import { hookBit, runningCall } from './running-call.ts';
import { reportUnrecoverable } from './unrecoverable.ts';
import { NeverSettled, abandon, cpuTime, isMemoryLimit, isTimeout, newIsolate, releaseAll, settledWithin } from './ivm-workarounds.ts';

export interface SlotOptions {
  timeoutMs: number;
  memoryLimitMb: number;
  host: HostBridge;
  /** The sandbox's id in the running-call table (see running-call.ts); 0: none. */
  runningId?: number;
}

const RUNTIME_CALL = `return (${installRuntime.toString()})($0, $1, $2, $3, $4, $5, $6, $7);`;

/** Top-level code may build tables, so it gets more time than one call — but not forever. */
const topLevelTimeout = (callTimeoutMs: number): number => Math.max(1000, callTimeoutMs);

/**
 * How long past its time limit a top level may take before the load gives up on it and abandons the
 * isolate: a V8 builtin that does not check for interrupts (Array(2**32-1).lastIndexOf(1)) outlasts the
 * limit, and isolated-vm's promise then never settles.
 */
export const LOAD_SLACK_MS = 500;

export { TEARDOWN_GRACE_MS, teardownGrace } from './ivm-workarounds.ts';

type KeptTail = [string | undefined, object | undefined, boolean, string | undefined, object | undefined, boolean];

/** Values of one kind an isolate keeps at most; past this it forgets them all and starts again. */
const KEPT_VALUES = 128;

/**
 * `ctx.connection`, apart from the rest of the context. With `key` (see connectionKey()) the isolate
 * keeps it between calls; with `certificateKey` it keeps the client certificate, which then crosses once.
 */
export interface SharedConnection { key?: string; connection: object; certificateKey?: string; certificate?: object }

/**
 * Which keys the isolate keeps, as far as the host knows, and the short names it keeps them under: a key
 * (all of a connection's facts, a few hundred characters) would cost the isolate a hash and a string-table
 * lookup of every character on every call. A name stays bound to its key until the isolate forgets
 * everything, and is never given out again.
 */
class KeptKeys {
  readonly #keys = new Set<string>();
  readonly #names = new Map<string, string>();
  #nextName = 0;
  #forgetNext = false;
  /** Whether the value must be sent, and whether the isolate must forget everything first. */
  need(key: string): { send: boolean; forget: boolean } {
    if (this.#forgetNext) {
      this.#forgetNext = false;
      this.#clear();
      return { send: true, forget: true };
    }
    if (this.#keys.has(key)) return { send: false, forget: false };
    // Names of keys never kept (their calls failed) count too, so that neither map grows without bound.
    if (this.#keys.size < KEPT_VALUES && this.#names.size < 4 * KEPT_VALUES) return { send: true, forget: false };
    this.#clear();
    return { send: true, forget: true };
  }
  /** The name the isolate knows `key` by (call after need(), which may have made it forget them all). */
  name(key: string): string {
    let name = this.#names.get(key);
    if (name === undefined) {
      name = `k${(this.#nextName++).toString(36)}`;
      this.#names.set(key, name);
    }
    return name;
  }
  add(key: string | undefined): void { if (key !== undefined) this.#keys.add(key); }
  /** The host no longer knows what the isolate keeps: send everything again, and have it forget first. */
  reset(): void {
    this.#keys.clear();
    this.#forgetNext = true;
  }
  #clear(): void {
    this.#keys.clear();
    this.#names.clear();
  }
}

/** One call of a batch: what call() takes. */
export interface BatchCall { hook: HookName; ctx: object; connectionId: string | null; shared?: SharedConnection }

/**
 * How a call of a batch ended: with a value or a failure; or later, on an isolate thread, because its
 * script returned a promise (the slot stays busy until every `later` has settled); or not at all —
 * `overran`: it was first and the fast path's time ran out, so it is slow by itself: run it alone on an
 * isolate thread; `again`: the batch was stopped before it ended, run it in a later batch; `alone`: the
 * isolate was lost during the batch, run it by itself (whichever call caused the loss then fails alone).
 */
export type BatchSettled =
  | { value: unknown }
  | { failure: ScriptFailure }
  | { later: Promise<unknown> }
  | 'overran' | 'again' | 'alone';

/**
 * Beyond the in-isolate time limit, how long before a call that never settles (a returned promise nobody
 * resolves) is cut off by disposing its isolate. Less than the sandbox's DEADLINE_SLACK_MS, so that this
 * cut-off, which says why, comes first.
 */
const NEVER_SETTLED_SLACK_MS = 250;
const watchdogDelay = (callTimeoutMs: number): number => callTimeoutMs + NEVER_SETTLED_SLACK_MS;

export class IsolateSlot {
  readonly #options: SlotOptions;
  readonly #files = new Map<HookName, string>();
  #isolate!: ivm.Isolate;
  // The one way into the isolate for calls (a single call is a batch of one), and the two follow-ups.
  #run!: ivm.Reference<RuntimeHandle['run']>;
  #settle!: ivm.Reference<RuntimeHandle['settle']>;
  #takeBatch!: ivm.Reference<RuntimeHandle['takeBatch']>;
  #takeSettled!: ivm.Reference<RuntimeHandle['takeSettled']>;
  #register!: ivm.Reference<RuntimeHandle['register']>;
  #context!: ivm.Context;
  #current: CurrentRun | null = null;
  readonly #keptConnections = new KeptKeys();
  readonly #keptCertificates = new KeptKeys();
  #disposedByUs = false;
  #cutOff = false;
  /** CPU time (ms) the isolate spent on the last fast-path entry that was stopped at its budget. */
  #stoppedCpuMs = 0;

  private constructor(options: SlotOptions) {
    this.#options = options;
  }

  /**
   * Build a slot from `scripts`. With `keepGoing` every script is tried even after a failure (for
   * `postern check`); the slot is returned only when there were no errors.
   */
  static async build(scripts: readonly ScriptSource[], options: SlotOptions, keepGoing = false): Promise<{ slot: IsolateSlot | null; errors: ScriptError[] }> {
    const slot = new IsolateSlot(options);
    const errors: ScriptError[] = [];
    await slot.#start();
    for (const script of scripts) {
      if (slot.#isolate.isDisposed) await slot.#start(); // the previous top level exhausted memory
      const error = await slot.#load(script);
      if (error) {
        errors.push(error);
        if (!keepGoing) break;
      }
    }
    if (errors.length) {
      slot.dispose();
      return { slot: null, errors };
    }
    return { slot, errors };
  }

  /** CPU time the isolate spent on the last fast-path attempt that its budget stopped (see FastPathPolicy). */
  get stoppedCpuMs(): number {
    return this.#stoppedCpuMs;
  }

  /** True once the isolate is gone (memory limit, watchdog, dispose): the slot must be replaced. */
  get lost(): boolean {
    return this.#isolate.isDisposed;
  }

  async heapUsed(): Promise<number | null> {
    if (this.lost) return null;
    try {
      // Answered on the isolate's thread, after the call running there: never, when that call is stuck.
      return (await settledWithin(this.#isolate.getHeapStatistics(), 1000)).used_heap_size;
    } catch {
      return null;
    }
  }

  /**
   * Run `hook` with a copy of `ctx`. Resolves with the copied return value or rejects with a ScriptFailure.
   *
   * With `fastPathMs` > 0 the call first runs on the calling thread, where it costs a tenth of a hop to an
   * isolate thread, but may hold the event loop for at most that long. A call still running then is
   * stopped and run again on an isolate thread with the full time limit; `overran` says so. Log lines of
   * the stopped attempt are dropped (the second run logs again); changes to the script's own globals stay.
   */
  async call(
    hook: HookName, ctx: object, connectionId: string | null, fastPathMs = 0, shared?: SharedConnection, timeoutMs = this.#options.timeoutMs,
  ): Promise<{ value: unknown; overran: boolean }> {
    const file = this.#files.get(hook);
    if (file === undefined) throw new Error(`no script for hook ${hook}`);
    if (fastPathMs > 0) {
      const [settled] = this.callBatch([{ hook, ctx, connectionId, shared }], fastPathMs);
      if (settled !== undefined && typeof settled === 'object') {
        if ('value' in settled) return { value: settled.value, overran: false };
        if ('failure' in settled) throw settled.failure;
        return { value: await settled.later, overran: false };
      }
      // Stopped at the budget ('overran'), or the entry failed otherwise ('alone'): run it on an isolate thread.
      return { value: await this.#callOnIsolateThread(hook, file, ctx, connectionId, shared, timeoutMs), overran: settled === 'overran' };
    }
    return { value: await this.#callOnIsolateThread(hook, file, ctx, connectionId, shared, timeoutMs), overran: false };
  }

  /** One call as it crosses, given what the isolate keeps; the isolate will keep what it is sent. */
  #wire({ hook, ctx, shared }: BatchCall): CallWire {
    const tail = this.#tail(shared);
    this.#kept(shared, tail);
    const [key, connection, forget, certificateKey, certificate, forgetCertificates] = tail;
    return [hook, ctx, key ?? null, connection ?? null, forget, certificateKey ?? null, certificate ?? null, forgetCertificates];
  }

  /** What crosses of `ctx.connection` for a call now, given what the isolate keeps. */
  #tail(shared: SharedConnection | undefined): KeptTail {
    if (!shared) return [undefined, undefined, false, undefined, undefined, false];
    const connection = shared.key === undefined ? { send: true, forget: false } : this.#keptConnections.need(shared.key);
    let certificate = { send: false, forget: false };
    // The certificate only matters when the connection itself crosses.
    if (connection.send && shared.certificateKey !== undefined) certificate = this.#keptCertificates.need(shared.certificateKey);
    // With a certificate key the certificate crosses apart (or not at all), never inside the connection.
    const withoutCertificate = (): object => (shared.certificateKey === undefined ? shared.connection : { ...shared.connection, clientCertificate: null });
    const certificateName = connection.send && shared.certificateKey !== undefined ? this.#keptCertificates.name(shared.certificateKey) : undefined;
    return [
      shared.key === undefined ? undefined : this.#keptConnections.name(shared.key), connection.send ? withoutCertificate() : undefined, connection.forget,
      certificateName, certificate.send ? shared.certificate : undefined, certificate.forget,
    ];
  }

  /**
   * Run several calls in one entry into the isolate, one after another, all within `fastPathMs` on the
   * calling thread. Entering the isolate is most of what a quick call costs (perf: the first call after
   * other work pays for cold caches), so calls that gather during one turn of the event loop share it.
   * A call the time limit stops is run again: alone on an isolate thread when it was first (it is slow
   * by itself, as in call()), else first in a later batch; the calls after it never started.
   */
  callBatch(calls: readonly BatchCall[], fastPathMs: number): BatchSettled[] {
    const wire: CallWire[] = [];
    for (const c of calls) {
      if (!this.#files.has(c.hook)) throw new Error(`no script for hook ${c.hook}`);
      wire.push(this.#wire(c)); // the isolate keeps them as it runs the batch, before the next call needs them
    }
    // Log lines outside any call's own (a promise's callbacks, run after the batch) are held, then told.
    const run: CurrentRun = { connectionId: null, file: '(policy script)', held: [] };
    this.#current = run;
    let entries: EntryWire[];
    let stopped = false;
    let hooks = 0;
    for (const c of calls) hooks |= hookBit(c.hook);
    const cpuBefore = cpuTime(this.#isolate);
    runningCall.enter(this.#options.runningId ?? 0, hooks);
    try {
      entries = this.#entries(this.#run.applySync(undefined, [JSON.stringify(wire), false], { timeout: fastPathMs }));
    } catch (e) {
      this.#stoppedCpuMs = this.#cpuMsSince(cpuBefore);
      // Which calls' facts the isolate took in is unknown now.
      this.#keptConnections.reset();
      this.#keptCertificates.reset();
      entries = [];
      stopped = isTimeout(e) && !this.#isolate.isDisposed;
      try {
        if (stopped) entries = this.#entries(this.#takeBatch.applySync(undefined, [], { timeout: fastPathMs }));
      } catch {
        stopped = false;
      }
      if (!stopped) {
        runningCall.exit();
        this.#current = null;
        return calls.map(() => 'alone');
      }
    }
    // Log lines after the calls' own (a promise's callbacks) belong to the one call that returned a promise, if one did.
    const promisedCalls = entries.flatMap((entry, i) => (entry.outcome === null ? [i] : []));
    const heldOwner = promisedCalls.length === 1 ? promisedCalls[0]! : -1;
    if (!stopped && promisedCalls.length) this.#settleAtOnce(entries, fastPathMs);
    runningCall.exit();
    this.#current = null;
    let chain: Promise<unknown> = Promise.resolve();
    const settled = calls.map(({ hook, connectionId }, i): BatchSettled => {
      const file = this.#files.get(hook)!;
      const entry = entries[i];
      if (entry === undefined) {
        if (!stopped) return { failure: new ScriptFailure('error', hook, file, null, null, 'the sandbox runner returned no outcome') };
        return i === 0 ? 'overran' : 'again';
      }
      for (const line of entry.logs) this.#tell(connectionId, file, line);
      if (i === heldOwner) for (const line of run.held!) this.#tell(connectionId, file, line);
      if (entry.outcome === null) {
        // One call at a time on the isolate's thread: each waits for the one before.
        const later = chain.then(() => this.#settleOnIsolateThread(hook, file, connectionId, i));
        chain = later.catch(() => {});
        return { later };
      }
      try {
        return { value: this.#value(hook, file, entry.outcome) };
      } catch (e) {
        return { failure: e as ScriptFailure };
      }
    });
    if (heldOwner === -1) for (const line of run.held!) this.#tell(null, '(policy script)', line);
    return settled;
  }

  /**
   * The outcomes of the batch's promises that settled as the runner returned (their hooks awaited only a store
   * that answers at once): taken now, on this thread, instead of a trip to an isolate thread each.
   */
  #settleAtOnce(entries: EntryWire[], fastPathMs: number): void {
    let done: Record<string, RunOutcome>;
    try {
      done = JSON.parse(this.#takeSettled.applySync(undefined, [], { timeout: fastPathMs }) as string) as Record<string, RunOutcome>;
    } catch {
      return; // they settle on an isolate thread, as any other promise
    }
    for (const [index, outcome] of Object.entries(done)) {
      const entry = entries[Number(index)];
      if (entry && entry.outcome === null && outcome !== null && typeof outcome === 'object') entry.outcome = outcome;
    }
  }

  /** A batch's entries from the runtime's JSON; anything malformed fails the calls it should have answered. */
  #entries(wire: unknown): EntryWire[] {
    let parsed: unknown;
    try { parsed = typeof wire === 'string' ? JSON.parse(wire) : null; } catch { parsed = null; }
    if (!Array.isArray(parsed)) return [];
    const entries: EntryWire[] = [];
    for (const entry of parsed as unknown[]) {
      const { outcome, logs } = (entry ?? {}) as Partial<EntryWire>;
      if (!Array.isArray(logs) || (outcome !== null && typeof outcome !== 'object')) break;
      entries.push({ outcome: outcome ?? null, logs: logs.map(String) });
    }
    return entries;
  }

  /** One script log line to the host's log; a failing logger does not decide a call. */
  #tell(connectionId: string | null, file: string, line: string): void {
    try { this.#options.host.log(connectionId, file, 'info', line); } catch { /* best effort */ }
  }

  #kept(shared: SharedConnection | undefined, tail: KeptTail): void {
    if (!shared) return;
    this.#keptConnections.add(shared.key);
    if (tail[4] !== undefined) this.#keptCertificates.add(shared.certificateKey);
  }

  /** Run one call on an isolate thread (a batch of one that waits for its promise there). */
  async #callOnIsolateThread(
    hook: HookName, file: string, ctx: object, connectionId: string | null, shared: SharedConnection | undefined, timeoutMs: number,
  ): Promise<unknown> {
    const calls = JSON.stringify([this.#wire({ hook, ctx, connectionId, shared })]);
    let wire: unknown;
    try {
      wire = await this.#onIsolateThread(hook, file, connectionId, timeoutMs, () => this.#run.apply(undefined, [calls, true], { timeout: timeoutMs, result: { promise: true } }));
    } catch (e) {
      // Stopped, out of memory or disposed (a script's own error is an outcome): what the isolate kept is unknown.
      this.#keptConnections.reset();
      this.#keptCertificates.reset();
      throw this.#callFailure(hook, file, e, timeoutMs);
    }
    const entry = this.#entries(wire)[0];
    return this.#value(hook, file, entry?.outcome ?? null);
  }

  /** Wait on an isolate thread for the promise the fast-path call with `index` returned. */
  async #settleOnIsolateThread(hook: HookName, file: string, connectionId: string | null, index: number): Promise<unknown> {
    const { timeoutMs } = this.#options;
    let wire: unknown;
    try {
      wire = await this.#onIsolateThread(hook, file, connectionId, timeoutMs, () => this.#settle.apply(undefined, [index], { timeout: timeoutMs, result: { promise: true } }));
    } catch (e) {
      throw this.#callFailure(hook, file, e, timeoutMs);
    }
    return this.#result(hook, file, wire);
  }

  /**
   * `enter()` on an isolate thread, with log lines told as they come. A returned promise that never
   * settles leaves nothing running to time out: past watchdogDelay() the isolate is disposed (#cutOff).
   * The running-call mirror names the script meanwhile, should the process die under it.
   */
  async #onIsolateThread(hook: HookName, file: string, connectionId: string | null, timeoutMs: number, enter: () => Promise<unknown>): Promise<unknown> {
    this.#current = { connectionId, file };
    const running = runningCall.enterAsync(this.#options.runningId ?? 0, hookBit(hook));
    this.#cutOff = false;
    const watchdog = setTimeout(() => {
      this.#cutOff = true;
      abandon(this.#isolate);
    }, watchdogDelay(timeoutMs));
    try {
      return await enter();
    } finally {
      clearTimeout(watchdog);
      runningCall.exitAsync(running);
      this.#current = null;
    }
  }

  #result(hook: HookName, file: string, wire: unknown): unknown {
    let outcome: RunOutcome | null = null;
    try { outcome = typeof wire === 'string' ? JSON.parse(wire) as RunOutcome : null; } catch { /* reported below */ }
    return this.#value(hook, file, outcome);
  }

  /** A call's value from its outcome, or the ScriptFailure it means. */
  #value(hook: HookName, file: string, outcome: RunOutcome | null): unknown {
    if (outcome === null || typeof outcome !== 'object' || typeof outcome.ok !== 'boolean') {
      throw new ScriptFailure('error', hook, file, null, null, 'the sandbox runner returned no outcome');
    }
    if (outcome.ok) return outcome.value;
    const { name, message, stack } = outcome.error;
    const at = frameIn(stack, file);
    throw new ScriptFailure('error', hook, file, at?.line ?? null, at?.column ?? null, name ? `${name}: ${message}` : message);
  }

  #cpuMsSince(before: bigint): number {
    const now = cpuTime(this.#isolate);
    return now > before ? Number(now - before) / 1e6 : 0;
  }

  dispose(): void {
    this.#disposedByUs = true;
    this.#releaseHandles();
    abandon(this.#isolate);
  }

  /** Let go of the handles into the isolate now (see releaseAll). */
  #releaseHandles(): void {
    releaseAll([this.#run, this.#settle, this.#takeBatch, this.#takeSettled, this.#register, this.#context]);
  }

  /** Fresh isolate, context and runtime. Only ever one context per isolate: contexts are not collected promptly. */
  async #start(): Promise<void> {
    const { memoryLimitMb, host } = this.#options;
    if (this.#isolate) this.#releaseHandles(); // a previous isolate lost to its memory limit during build
    // The process cannot get a parked thread back (see newIsolate): say so, loudly, and signal it.
    this.#isolate = newIsolate(memoryLimitMb, (message) => {
      const reason = `an isolate failed catastrophically: ${message}`;
      try { host.log(null, '(sandbox)', 'fatal', `${reason}; this process should be restarted`); } catch { /* nothing left to tell */ }
      reportUnrecoverable(reason);
    });
    this.#context = await this.#isolate.createContext();
    const callbacks = hostCallbacks(host, () => this.#current);
    const runtime = await this.#context.evalClosure(RUNTIME_CALL, callbacks, { result: { reference: true } }) as ivm.Reference<RuntimeHandle>;
    this.#run = await runtime.get('run', { reference: true });
    this.#settle = await runtime.get('settle', { reference: true });
    this.#takeBatch = await runtime.get('takeBatch', { reference: true });
    this.#takeSettled = await runtime.get('takeSettled', { reference: true });
    this.#register = await runtime.get('register', { reference: true });
    runtime.release();
  }

  /** Compile, link and evaluate one script and register its default export; a ScriptError if any step fails. */
  async #load({ hook, file, source }: ScriptSource): Promise<ScriptError | null> {
    if (this.#files.has(hook)) {
      return new ScriptError(file, 1, 1, `hook "${hook}" already has a script: ${this.#files.get(hook)}`);
    }
    const at = (p: Position | null, message: string): ScriptError => new ScriptError(file, p?.line ?? 1, p?.column ?? 1, message);
    let module: ivm.Module;
    try {
      module = await this.#isolate.compileModule(source, { filename: file });
    } catch (e) {
      const err = e as Error;
      const { message, position } = splitCompileMessage(String(err.message), file);
      return at(position, `${err.name ?? 'SyntaxError'}: ${message}`);
    }
    const imports = module.dependencySpecifiers;
    if (imports.length) {
      const spec = imports[0]!;
      return at(importPosition(source, spec),
        `cannot import "${spec}": policy scripts have no modules to import (helpers such as accept() and lookup() are globals; ` +
        'types come from `import type … from "postern"`, which is erased)');
    }
    const limit = topLevelTimeout(this.#options.timeoutMs);
    try {
      this.#current = { connectionId: null, file };
      await module.instantiate(this.#context, () => { throw new Error('imports are not allowed'); });
      // isolated-vm stops the top level at `limit`, unless it is inside a builtin that never checks.
      await settledWithin(module.evaluate({ timeout: limit, promise: true }), limit + LOAD_SLACK_MS);
    } catch (e) {
      if (e instanceof NeverSettled) {
        this.dispose(); // abandoned: its thread may never come back (see unrecoverable.ts)
        return new ScriptError(file, 1, 1, `top level did not finish within ${limit} ms and could not be stopped`);
      }
      return this.#topLevelError(file, e);
    } finally {
      this.#current = null;
    }
    const namespace = module.namespace;
    const fn = await namespace.get('default', { reference: true }) as ivm.Reference<(ctx: unknown) => unknown>;
    namespace.release(); // no handle outlives its use (see #releaseHandles)
    if (fn.typeof !== 'function') {
      const what = fn.typeof === 'undefined' ? 'has no default export' : `exports ${/^[aeiou]/.test(fn.typeof) ? 'an' : 'a'} ${fn.typeof} as default`;
      return at(fn.typeof === 'undefined' ? { line: 1, column: 1 } : defaultExportPosition(source),
        `${what}: a policy script must \`export default function (ctx) { … }\``);
    }
    await this.#register.apply(undefined, [hook, fn.derefInto({ release: true })]);
    this.#files.set(hook, file);
    return null;
  }

  #topLevelError(file: string, e: unknown): ScriptError {
    if (this.#isolate.isDisposed || isMemoryLimit(e)) {
      return new ScriptError(file, 1, 1, `top level exceeded the memory limit of ${this.#options.memoryLimitMb} MB`);
    }
    if (e instanceof Error) {
      if (isTimeout(e)) {
        const p = frameIn(String(e.stack), file); // isolated-vm adds where the script was stopped
        return new ScriptError(file, p?.line ?? 1, p?.column ?? 1, `top level did not finish within ${topLevelTimeout(this.#options.timeoutMs)} ms`);
      }
      const p = frameIn(String(e.stack), file);
      return new ScriptError(file, p?.line ?? 1, p?.column ?? 1, `top level threw ${e.name}: ${e.message}`);
    }
    return new ScriptError(file, 1, 1, `top level threw a value that is not an Error: ${String(e)}`);
  }

  /** Map an isolated-vm rejection (the runner itself never rejects) to the failure kind it means. */
  #callFailure(hook: HookName, file: string, e: unknown, timeoutMs = this.#options.timeoutMs): ScriptFailure {
    const message = String((e as Error)?.message ?? e);
    const { memoryLimitMb } = this.#options;
    if (this.#cutOff) {
      return new ScriptFailure('timeout', hook, file, null, null, `did not finish within ${watchdogDelay(timeoutMs)} ms (a returned promise never settled)`);
    }
    if (this.#disposedByUs) return new ScriptFailure('error', hook, file, null, null, 'the sandbox was disposed during the call');
    if (this.#isolate.isDisposed || isMemoryLimit(e)) {
      return new ScriptFailure('memory', hook, file, null, null, `exceeded the memory limit of ${memoryLimitMb} MB`);
    }
    if (isTimeout(e)) {
      const p = e instanceof Error ? frameIn(String(e.stack), file) : null;
      return new ScriptFailure('timeout', hook, file, p?.line ?? null, p?.column ?? null, `timed out after ${timeoutMs} ms`);
    }
    return new ScriptFailure('error', hook, file, null, null, message);
  }
}

/**
 * One isolate with one long-lived context holding every script of a generation: built (and validated)
 * once, then called many times, one call at a time. A slot whose isolate is lost is replaced, not repaired.
 */
import { runningCall } from './running-call.ts';
import './no-wasm-code-gc.ts';
import ivm from 'isolated-vm';
import type { HookName } from './api/index.ts';
import { ScriptError, ScriptFailure } from './errors.ts';
import { hostCallbacks, type CurrentRun, type HostBridge } from './host-callbacks.ts';
import { installRuntime, type BatchCallWire, type BatchEntry, type RunOutcome, type RuntimeHandle } from './isolate-runtime.ts';
import { defaultExportPosition, frameIn, importPosition, splitCompileMessage, type Position } from './locations.ts';
import type { ScriptSource } from './script-source.ts';

export interface SlotOptions {
  timeoutMs: number;
  memoryLimitMb: number;
  host: HostBridge;
}

const RUNTIME_CALL = `return (${installRuntime.toString()})($0, $1, $2, $3, $4, $5);`;
const MEMORY_LOST = /memory limit/i;
const TIMED_OUT = /execution timed out/i;

/** Top-level code may build tables, so it gets more time than one call — but not forever. */
const topLevelTimeout = (callTimeoutMs: number): number => Math.max(1000, callTimeoutMs);

/**
 * isolated-vm deletes a disposed isolate later, on one of its threads: give it that time before the
 * process may exit. (Exits must also be process.exit(): a natural exit tears V8's heap down, where
 * isolated-vm 7 aborts on a handle still in the young generation — see engine/cli/main.ts.)
 */
export const TEARDOWN_GRACE_MS = 250;

export function teardownGrace(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, TEARDOWN_GRACE_MS));
}

/**
 * What the runtime's run() and runSync() take (see KeptArgs): only strings and booleans, the objects as
 * JSON. A string crosses as one copy, and JSON.parse in the isolate costs less than isolated-vm's
 * structured clone (perf: copying arguments in and out was about half of a call's cost). No handles.
 */
type RunArgs = [
  string, string,
  string | undefined, string | undefined, boolean,
  string | undefined, string | undefined, boolean,
];

/** What a call returns: a RunOutcome as JSON, or null when the script returned a promise (fast path). */
type WireOutcome = string | null;

type KeptTail = [string | undefined, object | undefined, boolean, string | undefined, object | undefined, boolean];

const json = (value: object | undefined): string | undefined => (value === undefined ? undefined : JSON.stringify(value));

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

/** Beyond the in-isolate time limit, how long before a call that never settles is cut off. */
const watchdogDelay = (callTimeoutMs: number): number => callTimeoutMs + Math.max(250, callTimeoutMs);

export class IsolateSlot {
  readonly #options: SlotOptions;
  readonly #files = new Map<HookName, string>();
  #isolate!: ivm.Isolate;
  // Typed by what the host passes; RuntimeHandle types what the isolate receives.
  #run!: ivm.Reference<(...args: RunArgs) => WireOutcome | Promise<WireOutcome>>;
  #runSync!: ivm.Reference<(...args: RunArgs) => WireOutcome>;
  #settle!: ivm.Reference<RuntimeHandle['settle']>;
  #runBatch!: ivm.Reference<RuntimeHandle['runBatch']>;
  #takeBatch!: ivm.Reference<RuntimeHandle['takeBatch']>;
  #register!: ivm.Reference<RuntimeHandle['register']>;
  #context!: ivm.Context;
  #current: CurrentRun | null = null;
  readonly #keptConnections = new KeptKeys();
  readonly #keptCertificates = new KeptKeys();
  #disposedByUs = false;
  #cutOff = false;

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

  /** True once the isolate is gone (memory limit, watchdog, dispose): the slot must be replaced. */
  get lost(): boolean {
    return this.#isolate.isDisposed;
  }

  async heapUsed(): Promise<number | null> {
    if (this.lost) return null;
    try {
      return (await this.#isolate.getHeapStatistics()).used_heap_size;
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
    hook: HookName, ctx: object, connectionId: string | null, fastPathMs = 0, shared?: SharedConnection,
  ): Promise<{ value: unknown; overran: boolean }> {
    const file = this.#files.get(hook);
    if (file === undefined) throw new Error(`no script for hook ${hook}`);
    const tail = this.#tail(shared);
    try {
      const result = await this.#call(hook, file, ctx, connectionId, fastPathMs, tail);
      this.#kept(shared, tail);
      return result;
    } catch (e) {
      // A script error leaves the isolate keeping what it was sent; anything else may not have.
      if (e instanceof ScriptFailure && e.kind === 'error' && !this.lost) this.#kept(shared, tail);
      throw e;
    }
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
    const wire: BatchCallWire[] = [];
    for (const { hook, ctx, shared } of calls) {
      if (!this.#files.has(hook)) throw new Error(`no script for hook ${hook}`);
      const tail = this.#tail(shared);
      // The isolate will keep them as it runs the batch, before the next call needs them.
      this.#kept(shared, tail);
      const [key, connection, forget, certificateKey, certificate, forgetCertificates] = tail;
      wire.push([hook, ctx, key ?? null, connection ?? null, forget, certificateKey ?? null, certificate ?? null, forgetCertificates]);
    }
    // Log lines outside any call's own (a promise's callbacks, run after the batch) are held, then told.
    const run: CurrentRun = { connectionId: null, file: '(policy script)', held: [] };
    this.#current = run;
    let entries: BatchEntry[];
    let stopped = false;
    try {
      runningCall.enter(calls.map((c) => this.#files.get(c.hook)!));
      entries = this.#entries(this.#runBatch.applySync(undefined, [JSON.stringify(wire)], { timeout: fastPathMs }));
      runningCall.exit();
    } catch (e) {
      runningCall.exit();
      // Which calls' facts the isolate took in is unknown now.
      this.#keptConnections.reset();
      this.#keptCertificates.reset();
      entries = [];
      stopped = TIMED_OUT.test(String((e as Error)?.message)) && !this.#isolate.isDisposed;
      try {
        if (stopped) entries = this.#entries(this.#takeBatch.applySync(undefined, [], { timeout: fastPathMs }));
      } catch {
        stopped = false;
      }
      if (!stopped) {
        this.#current = null;
        return calls.map(() => 'alone');
      }
    }
    this.#current = null;
    const promised = entries.filter((entry) => entry.outcome === null).length;
    let chain: Promise<unknown> = Promise.resolve();
    const settled = calls.map(({ hook, connectionId }, i): BatchSettled => {
      const file = this.#files.get(hook)!;
      const entry = entries[i];
      if (entry === undefined) {
        if (!stopped) return { failure: new ScriptFailure('error', hook, file, null, null, 'the sandbox runner returned no outcome') };
        return i === 0 ? 'overran' : 'again';
      }
      for (const line of entry.logs) this.#tell(connectionId, file, line);
      if (entry.outcome === null) {
        if (promised === 1) for (const line of run.held!) this.#tell(connectionId, file, line);
        // One call at a time on the isolate's thread: each waits for the one before.
        const later = chain.then(() => this.#callOnIsolateThread(hook, file, connectionId, null, i));
        chain = later.catch(() => {});
        return { later };
      }
      try {
        return { value: this.#value(hook, file, entry.outcome) };
      } catch (e) {
        return { failure: e as ScriptFailure };
      }
    });
    if (promised !== 1) for (const line of run.held!) this.#tell(null, '(policy script)', line);
    return settled;
  }

  /** A batch's entries from the runtime's JSON; anything malformed fails the calls it should have answered. */
  #entries(wire: unknown): BatchEntry[] {
    let parsed: unknown;
    try { parsed = typeof wire === 'string' ? JSON.parse(wire) : null; } catch { parsed = null; }
    if (!Array.isArray(parsed)) return [];
    const entries: BatchEntry[] = [];
    for (const entry of parsed as unknown[]) {
      const { outcome, logs } = (entry ?? {}) as Partial<BatchEntry>;
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

  async #call(
    hook: HookName, file: string, ctx: object, connectionId: string | null, fastPathMs: number, tail: KeptTail,
  ): Promise<{ value: unknown; overran: boolean }> {
    const [key, connection, forget, certificateKey, certificate, forgetCertificates] = tail;
    const args = (): RunArgs => [hook, JSON.stringify(ctx), key, json(connection), forget, certificateKey, json(certificate), forgetCertificates];
    if (fastPathMs > 0) {
      const run: CurrentRun = { connectionId, file, held: [] };
      this.#current = run;
      let outcome: WireOutcome;
      try {
        runningCall.enter([file]);
        outcome = this.#runSync.applySync(undefined, args(), { timeout: fastPathMs }) as WireOutcome;
        runningCall.exit();
      } catch (e) {
        runningCall.exit();
        this.#current = null;
        if (!TIMED_OUT.test(String((e as Error)?.message)) || this.#isolate.isDisposed) {
          this.#emit(run);
          throw this.#callFailure(hook, file, e);
        }
        return { value: await this.#callOnIsolateThread(hook, file, connectionId, args), overran: true };
      }
      this.#current = null;
      this.#emit(run);
      if (outcome !== null) return { value: this.#result(hook, file, outcome), overran: false };
      // The script returned a promise: wait for it where waiting does not block the event loop.
      return { value: await this.#callOnIsolateThread(hook, file, connectionId, null), overran: false };
    }
    return { value: await this.#callOnIsolateThread(hook, file, connectionId, args), overran: false };
  }

  /** Log lines a fast-path attempt held back, now that the attempt counts. */
  #emit(run: CurrentRun): void {
    for (const line of run.held ?? []) this.#tell(run.connectionId, run.file, line);
  }

  /** Run the hook with `args()` (or, when null, wait for the promise the fast path kept) on an isolate thread. */
  async #callOnIsolateThread(hook: HookName, file: string, connectionId: string | null, args: (() => RunArgs) | null, settleIndex?: number): Promise<unknown> {
    const { timeoutMs } = this.#options;
    this.#current = { connectionId, file };
    this.#cutOff = false;
    // A returned promise that never settles leaves nothing running to time out; only disposing ends it.
    const watchdog = setTimeout(() => {
      this.#cutOff = true;
      this.#isolate.dispose();
    }, watchdogDelay(timeoutMs));
    let outcome: WireOutcome;
    try {
      const options = { timeout: timeoutMs, result: { promise: true } } as const;
      outcome = (args
        ? await this.#run.apply(undefined, args(), options)
        : await this.#settle.apply(undefined, settleIndex === undefined ? [] : [settleIndex], options)) as WireOutcome;
    } catch (e) {
      throw this.#callFailure(hook, file, e);
    } finally {
      clearTimeout(watchdog);
      this.#current = null;
    }
    return this.#result(hook, file, outcome);
  }

  #result(hook: HookName, file: string, wire: WireOutcome): unknown {
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

  dispose(): void {
    this.#disposedByUs = true;
    this.#releaseHandles();
    if (!this.#isolate.isDisposed) this.#isolate.dispose();
  }

  /**
   * Let go of the handles into the isolate now. A handle still alive when the process exits is destroyed
   * during Node's teardown, where isolated-vm aborts (`IsolateEnvironment::GetCurrent` assertion).
   */
  #releaseHandles(): void {
    for (const handle of [this.#run, this.#runSync, this.#settle, this.#runBatch, this.#takeBatch, this.#register, this.#context]) {
      try { handle?.release(); } catch { /* already gone with its isolate */ }
    }
  }

  /** Fresh isolate, context and runtime. Only ever one context per isolate: contexts are not collected promptly. */
  async #start(): Promise<void> {
    const { memoryLimitMb, host } = this.#options;
    if (this.#isolate) this.#releaseHandles(); // a previous isolate lost to its memory limit during build
    this.#isolate = new ivm.Isolate({
      memoryLimit: memoryLimitMb,
      onCatastrophicError: (message) => {
        try { host.log(null, '(sandbox)', 'error', `isolate failed catastrophically: ${message}`); } catch { /* nothing left to tell */ }
      },
    });
    this.#context = await this.#isolate.createContext();
    const callbacks = hostCallbacks(host, () => this.#current);
    const runtime = await this.#context.evalClosure(RUNTIME_CALL, callbacks, { result: { reference: true } }) as ivm.Reference<RuntimeHandle>;
    this.#run = await runtime.get('run', { reference: true });
    this.#runSync = await runtime.get('runSync', { reference: true });
    this.#settle = await runtime.get('settle', { reference: true });
    this.#runBatch = await runtime.get('runBatch', { reference: true });
    this.#takeBatch = await runtime.get('takeBatch', { reference: true });
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
    try {
      this.#current = { connectionId: null, file };
      await module.instantiate(this.#context, () => { throw new Error('imports are not allowed'); });
      await module.evaluate({ timeout: topLevelTimeout(this.#options.timeoutMs), promise: true });
    } catch (e) {
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
    if (this.#isolate.isDisposed || MEMORY_LOST.test(String((e as Error)?.message))) {
      return new ScriptError(file, 1, 1, `top level exceeded the memory limit of ${this.#options.memoryLimitMb} MB`);
    }
    if (e instanceof Error) {
      if (TIMED_OUT.test(e.message)) {
        return new ScriptError(file, 1, 1, `top level did not finish within ${topLevelTimeout(this.#options.timeoutMs)} ms`);
      }
      const p = frameIn(String(e.stack), file);
      return new ScriptError(file, p?.line ?? 1, p?.column ?? 1, `top level threw ${e.name}: ${e.message}`);
    }
    return new ScriptError(file, 1, 1, `top level threw a value that is not an Error: ${String(e)}`);
  }

  /** Map an isolated-vm rejection (the runner itself never rejects) to the failure kind it means. */
  #callFailure(hook: HookName, file: string, e: unknown): ScriptFailure {
    const message = String((e as Error)?.message ?? e);
    const { timeoutMs, memoryLimitMb } = this.#options;
    if (this.#cutOff) {
      return new ScriptFailure('timeout', hook, file, null, null, `did not finish within ${watchdogDelay(timeoutMs)} ms (a returned promise never settled)`);
    }
    if (this.#disposedByUs) return new ScriptFailure('error', hook, file, null, null, 'the sandbox was disposed during the call');
    if (this.#isolate.isDisposed || MEMORY_LOST.test(message)) {
      return new ScriptFailure('memory', hook, file, null, null, `exceeded the memory limit of ${memoryLimitMb} MB`);
    }
    if (TIMED_OUT.test(message)) {
      const p = e instanceof Error ? frameIn(String(e.stack), file) : null;
      return new ScriptFailure('timeout', hook, file, p?.line ?? null, p?.column ?? null, `timed out after ${timeoutMs} ms`);
    }
    return new ScriptFailure('error', hook, file, null, null, message);
  }
}

/**
 * One isolate with one long-lived context holding every script of a generation: built (and validated)
 * once, then called many times, one entry at a time. Calls whose promises wait for host operations (a store)
 * do not hold it: the answers are delivered as they come. A slot whose isolate is lost is replaced, not repaired.
 */
import type ivm from 'isolated-vm';
import type { HookName } from './api/index.ts';
import { ScriptError, ScriptFailure } from './errors.ts';
import { installThreadHold } from './thread-hold.ts';
import { hostCallbacks, type CurrentRun, type HostBridge } from './host-callbacks.ts';
import { KEPT_LIST_MIN, KeptLists, ListView, type SentList } from './kept-lists.ts';
import { installRuntime, type AnswerWire, type CallWire, type EntryWire, type RunOutcome, type RuntimeHandle, type SettledBox } from './isolate-runtime.ts';
import { defaultExportPosition, frameIn, importPosition, splitCompileMessage, stackFrames, type Position } from './locations.ts';
import type { ScriptSource } from './script-source.ts';
import { LOG_CLOSED_WORD, SHADOW_LOG_CLOSED_WORD, hookBit, runningCall } from './running-call.ts';
import { loadEnded, loadStarted, reportAbandonedRunning, reportUnrecoverable, stuckAtLoad } from './unrecoverable.ts';
import { OperationJournal, OperationRefused, SharedOperations, type Attempt } from './operation-journal.ts';
import { NeverSettled, abandon, executing, isMemoryLimit, isTimeout, newIsolate, quietAfter, releaseAll, settledWithin, sharedInto } from './ivm-workarounds.ts';
import { ThreadCpuClock } from './thread-cpu.ts';
import { cpuReadingMaxAgeMs } from './fast-path-policy.ts';
import { timerDelay } from '../timing/timer-limit.ts';

export interface SlotOptions {
  timeoutMs: number;
  memoryLimitMb: number;
  host: HostBridge;
  /** The sandbox's id in the running-call table (see running-call.ts); 0: none. */
  runningId?: number;
  /** Its scripts are a listener's shadow scripts (fenced apart from the same files run live: running-call.ts). */
  shadow?: boolean;
}

const RUNTIME_CALL = `return (${installRuntime.toString()})($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10);`;

/** Top-level code may build tables, so it gets more time than one call — but not forever. */
const topLevelTimeout = (callTimeoutMs: number): number => Math.max(1000, callTimeoutMs);

/**
 * How long past its time limit a top level may take before the load gives up on it and abandons the
 * isolate: a V8 builtin that does not check for interrupts (Array(2**32-1).lastIndexOf(1)) outlasts the
 * limit, and isolated-vm's promise then never settles.
 */
export const LOAD_SLACK_MS = 500;
/** Whether an abandoned top level's evaluation settled within LOAD_SLACK_MS of its isolate's disposal: its thread is back. */
const cameBack = (evaluation: Promise<unknown>): Promise<boolean> =>
  settledWithin(evaluation.then(() => true, () => true), LOAD_SLACK_MS).catch(() => false);

/** Why a top level failed to load when it could not be stopped (`before`: in an earlier load in this process, so not run again). */
const stuckMessage = (limitMs: number, before: boolean): string => before
  ? `top level did not finish within ${limitMs} ms and could not be stopped, in an earlier load in this process: not run again until the file changes`
  : `top level did not finish within ${limitMs} ms and could not be stopped`;

export { TEARDOWN_GRACE_MS, teardownGrace } from './ivm-workarounds.ts';

/**
 * Entries into isolates by this process, on the event-loop thread and on isolate threads: what a call costs
 * is mostly how often it enters (test/bench/sandbox-rate.ts reads these); and the characters of the calls'
 * JSON sent in (what a call copies in: test/sandbox/kept-recipients.test.ts counts it).
 */
export const slotEntries = { eventLoop: 0, isolateThread: 0, callChars: 0 };

/**
 * Deliveries started without waiting for the end of the turn (see IsolateSlot.#scheduleFlush): one per turn of
 * the event loop, over all slots of the process.
 */
class DeliveryTurn {
  #taken = false;
  readonly #reset = (): void => { this.#taken = false; };
  /** True once per turn (the first asker): it may deliver at once. */
  take(): boolean {
    if (this.#taken) return false;
    this.#taken = true;
    setImmediate(this.#reset);
    return true;
  }
}
const deliveryTurn = new DeliveryTurn();

/** Values of one kind an isolate keeps at most; past this it forgets them all and starts again. */
const KEPT_VALUES = 128;

/**
 * Host operations (a DNS query, a store round trip) one call may have in flight at once; more reject in
 * the script. Operations of a continuation whose call the runtime could not name share a larger allowance.
 */
export const MAX_IN_FLIGHT_PER_CALL = 32;
const MAX_IN_FLIGHT_UNATTRIBUTED = 1024;

/**
 * `ctx.connection`, apart from the rest of the context. With `key` (see connectionKey()) the isolate
 * keeps it between calls; with `certificateKey` it keeps the client certificate, which then crosses once.
 */
export interface SharedConnection { key?: string; connection: object; certificateKey?: string; certificate?: object }


/** What KeptKeys.need() answers (shared, never changed: a call costs no allocation). */
const SEND_NOTHING = Object.freeze({ send: false, forget: false });
const SEND = Object.freeze({ send: true, forget: false });
const FORGET_AND_SEND = Object.freeze({ send: true, forget: true });

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
  need(key: string): { readonly send: boolean; readonly forget: boolean } {
    if (this.#forgetNext) {
      this.#forgetNext = false;
      this.#clear();
      return FORGET_AND_SEND;
    }
    if (this.#keys.has(key)) return SEND_NOTHING;
    // Names of keys never kept (their calls failed) count too, so that neither map grows without bound.
    if (this.#keys.size < KEPT_VALUES && this.#names.size < 4 * KEPT_VALUES) return SEND;
    this.#clear();
    return FORGET_AND_SEND;
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

/**
 * One call of a batch: what call() takes. `journal`: the call's host operations over all its attempts
 * (operation-journal.ts); the caller passes the same one to every attempt of a call.
 */
export interface BatchCall { hook: HookName; ctx: object; connectionId: string | null; shared?: SharedConnection; journal?: OperationJournal }

/** Entries tried to run a stopped batch's leftovers (see #drainLeftovers) before the isolate is given up. */
const DRAIN_ATTEMPTS = 3;

/** Stopped attempts (and entries) remembered only to refuse what their leftover code starts: this many at most. */
const RETIRED_OWNERS = 64;

/**
 * How a call of a batch ended: with a value or a failure; or later, because its script returned a promise
 * that waits for a host operation (the slot is free meanwhile: the answers are delivered when they come,
 * see #flush; `cancel` forgets the call, at its deadline); or not at all —
 * `overran`: it was first and the fast path's time ran out, so it is slow by itself: run it alone on an
 * isolate thread; `again`: the batch was stopped before it ended, run it in a later batch; `alone`: the
 * isolate was lost during the batch, run it by itself (whichever call caused the loss then fails alone), or
 * its promise was still pending when a later call of the batch was stopped (see callBatch).
 */
export type BatchSettled =
  | { value: unknown }
  | { failure: ScriptFailure }
  | { later: Promise<unknown>; cancel(): void }
  | 'overran' | 'again' | 'alone';

/** The log lines of an entry that logged none (most): shared, never changed. */
const NO_LINES: string[] = Object.freeze([]) as unknown as string[];

/** How most calls settle (a script that returns nothing): one shared object, not one per call. */
const SETTLED_UNDEFINED: BatchSettled = Object.freeze({ value: undefined });

/** What applySync is told for a fast-path entry. */
interface EntryOptions { timeout: number; result: { copy: true } }

/** The fast-path entry running now with several calls: their journals, and the pool they share once made (see #entryPoolFor). */
interface EntryPool { tag: number; journals: readonly OperationJournal[]; pool: SharedOperations | null }

/**
 * Why a call's `later` promise (BatchSettled) rejects when its continuation must run again from the start on
 * an isolate thread: the fast-path entry that delivered its answers was stopped at the budget (`overran`:
 * count it against the hook, with `cpuMs` of the thread's CPU time, see FastPathPolicy), or the isolate was
 * lost under it. Its operations so far are its journal's: the re-run gets their answers, none starts again.
 */
export class RunAgain extends Error {
  readonly overran: boolean;
  readonly cpuMs: number;
  constructor(overran: boolean, cpuMs: number) {
    super('run again on an isolate thread');
    this.name = 'RunAgain';
    this.overran = overran;
    this.cpuMs = cpuMs;
  }
}

/**
 * Beyond the in-isolate time limit, how long before a call that never settles (a returned promise nobody
 * resolves) is cut off by disposing its isolate. Less than the sandbox's DEADLINE_SLACK_MS, so that this
 * cut-off, which says why, comes first.
 */
const NEVER_SETTLED_SLACK_MS = 250;

/** How often that cut-off looks again while the isolate still executes (see #onIsolateThread). */
const WATCHDOG_RECHECK_MS = 50;

/**
 * How long answers to fast-path calls may wait behind a delivery running on an isolate thread (another call's
 * continuation, up to the call time limit) before those calls run again from the start elsewhere (see #moveAnswered).
 */
export const BEHIND_DELIVERY_MS = 50;
// Through timerDelay(): at sandbox.timeoutMs's largest, the sum overflowed a timer and cut every call off after 1 ms.
const watchdogDelay = (callTimeoutMs: number): number => timerDelay(callTimeoutMs + NEVER_SETTLED_SLACK_MS);

/** A call whose promise has not settled yet, known by its id while it waits for host operations. */
interface Awaiting {
  hook: HookName;
  file: string;
  connectionId: string | null;
  /** Unset for a call waited for on an isolate thread (run with `wait`): its outcome comes from there. */
  resolve?: (value: unknown) => void;
  reject?: (error: unknown) => void;
}

/** What the pool hears from a slot between calls: a delivery ended (the slot may be free), the isolate was lost. */
export interface SlotListener {
  delivered(): void;
  lost(): void;
}

/** What run() returned on the event-loop thread: its entries' JSON, and the outcomes settled within the entry. */
function unboxed(out: unknown): { entries: unknown; settled: Record<string, string> | null } {
  if (out !== null && typeof out === 'object') {
    const { e, f } = out as Partial<SettledBox>;
    return { entries: e, settled: f !== null && typeof f === 'object' ? f : {} };
  }
  return { entries: out, settled: null };
}

/** One outcome's JSON text from a SettledBox; null when malformed (the call then fails: no outcome). */
function parseOutcome(text: string): RunOutcome | null {
  try {
    const outcome = JSON.parse(text) as unknown;
    return outcome !== null && typeof outcome === 'object' ? outcome as RunOutcome : null;
  } catch {
    return null;
  }
}

export class IsolateSlot {
  readonly #options: SlotOptions;
  readonly #files = new Map<HookName, string>();
  #isolate!: ivm.Isolate;
  // The one way into the isolate for calls (a single call is a batch of one), and the two follow-ups.
  #run!: ivm.Reference<RuntimeHandle['run']>;
  #deliver!: ivm.Reference<RuntimeHandle['deliver']>;
  #takeBatch!: ivm.Reference<RuntimeHandle['takeBatch']>;
  #takeSettled!: ivm.Reference<RuntimeHandle['takeSettled']>;
  #register!: ivm.Reference<RuntimeHandle['register']>;
  #context!: ivm.Context;
  #current: CurrentRun | null = null;
  /** The hooks whose code runs on the isolate's thread now (a call alone, or a delivery's continuations): see #start. */
  #onThread: readonly HookName[] = [];
  readonly #keptConnections = new KeptKeys();
  readonly #keptCertificates = new KeptKeys();
  readonly #keptLists = new KeptLists();
  /** The long lists sent with the calls of the batch being run, and the index of the call of each (see callBatch). */
  readonly #sentLists: SentList[] = [];
  readonly #sentListCalls: number[] = [];
  #disposedByUs = false;
  #cutOff = false;
  /** CPU time (ms) the isolate spent on the last fast-path entry that was stopped at its budget. */
  #stoppedCpuMs = 0;
  #nextCallId = 0;
  /** Calls that returned a promise still pending, by call id. */
  readonly #awaiting = new Map<number, Awaiting>();
  /** Operations started and not yet answered: the call (or entry tag) waiting for each. */
  readonly #opOwners = new Map<number, number>();
  /** Who starts host operations, by the call id (or entry tag, see run()) the runtime names: see #operate. */
  readonly #owners = new Map<number, Attempt | SharedOperations>();
  /** Owners closed or done with, kept a while (oldest first), then forgotten. */
  readonly #retired: number[] = [];
  #nextTag = 0;
  /** Set while the isolate runs what a stopped entry left behind: it starts nothing (see callBatch). */
  #refusing = false;
  /** Operations started and not yet answered by the host, per call id (-1 or a batch tag: a continuation of a call not known). */
  readonly #inFlight = new Map<number, number>();
  /** Answers that came since the last delivery, delivered together (see #scheduleFlush). */
  #answers: AnswerWire = [];
  /** The fast path's budget (ms) as the pool last gave it: answers to fast-path calls are delivered within it. */
  #fastPathMs = 0;
  /** Whether the last SettledBox the runtime handed out arrived (see isolate-runtime.ts): told to the next entry. */
  #boxTaken = true;
  #flushScheduled = false;
  /** Set while answers to fast-path calls wait behind a delivery on an isolate thread (see #moveAnswered). */
  #moveTimer: ReturnType<typeof setTimeout> | null = null;
  /** True while a delivery runs on an isolate thread: no fast-path entry may start then (it would block). */
  #delivering = false;
  /** Why a delivery failed, for the calls on isolate threads whose continuations it ran (see #failAwaiting). */
  readonly #failedWith = new Map<number, unknown>();
  /** Outcomes may be waiting in the isolate without an answer to deliver (takeSettled failed). */
  #collect = false;
  /** The calls of a batch whose promises were pending at its end: its continuations' operations go under its tag. */
  readonly #tagCalls = new Map<number, readonly number[]>();
  /**
   * Whose each recent call is (its connection and script), kept past its verdict: code it left running (a promise
   * it did not wait for) may log after it, and the runtime names the call; known only while the call waited
   * (#awaiting), such lines were told under no connection (no `cid` to find them by).
   */
  readonly #calledBy = new CallerRing();
  /** Set while a script's top level runs. */
  #loading = false;
  /** Operations a top level started: their answers come after its load (which does not wait for them), to code no call owns. */
  readonly #topLevelOps = new Set<number>();
  /** isolated-vm operations started and not yet settled: dispose() waits for them (see quietAfter). */
  readonly #ivmPending = new Set<Promise<unknown>>();
  listener: SlotListener | null = null;
  /** Set during a fast-path entry with several calls (see callBatch). */
  #entryPool: EntryPool | null = null;
  /** Who runs during a fast-path entry (see callBatch): one object for every entry, emptied after each. */
  readonly #batchRun: CurrentRun = { connectionId: null, file: '(policy script)', held: [] };
  #entryOptionsFor: EntryOptions | null = null;
  /** The thread's CPU time around fast-path entries (what a stopped one used: see thread-cpu.ts). */
  readonly #cpuClock = new ThreadCpuClock();

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
      // Fenced for crashing its process (while loading or in calls, see engine/cluster/fence-book.ts): its top
      // level does not run again; its hook answers as fenced (Sandbox.invoke) until the file changes.
      if (runningCall.isFencedSource(script.hook, script.file, script.source, options.shadow === true)) continue;
      if (slot.#isolate.isDisposed) await slot.#start(); // the previous top level exhausted memory
      const error = await slot.#load(script);
      if (error) {
        errors.push(error);
        if (!keepGoing) break;
      }
    }
    if (errors.length) {
      void slot.dispose();
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
      return (await settledWithin(this.#track(this.#isolate.getHeapStatistics()), 1000)).used_heap_size;
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
    journal = new OperationJournal(),
  ): Promise<{ value: unknown; overran: boolean }> {
    const file = this.#files.get(hook);
    if (file === undefined) throw new Error(`no script for hook ${hook}`);
    if (fastPathMs > 0) {
      const [settled] = this.callBatch([{ hook, ctx, connectionId, shared, journal }], fastPathMs);
      if (settled !== undefined && typeof settled === 'object') {
        if ('value' in settled) return { value: settled.value, overran: false };
        if ('failure' in settled) throw settled.failure;
        try {
          return { value: await settled.later, overran: false };
        } catch (e) {
          if (!(e instanceof RunAgain) || this.lost) throw e; // on a lost isolate, the caller runs it again elsewhere
          return { value: await this.#callOnIsolateThread(hook, file, ctx, connectionId, shared, timeoutMs, journal), overran: e.overran };
        }
      }
      // Stopped at the budget ('overran'), or the entry failed otherwise ('alone'): run it on an isolate thread.
      return { value: await this.#callOnIsolateThread(hook, file, ctx, connectionId, shared, timeoutMs, journal), overran: settled === 'overran' };
    }
    return { value: await this.#callOnIsolateThread(hook, file, ctx, connectionId, shared, timeoutMs, journal), overran: false };
  }

  /**
   * One call as it crosses, with what crosses of `ctx.connection` given what the isolate keeps; the isolate
   * will keep what it is sent (the host counts it kept now: see callBatch for when it forgets).
   */
  #wire({ hook, ctx: given, shared }: BatchCall, callId: number, sent?: SentList[]): CallWire {
    // A long recipient list crosses as what this isolate has not seen of it (kept-lists.ts); a short one whole.
    // `sent` collects it, to confirm once the call ran.
    let ctx = given;
    let recipients: CallWire[9] = null;
    const transaction = (given as { transaction?: { recipients?: unknown } }).transaction;
    if (transaction?.recipients instanceof ListView && transaction.recipients.length >= KEPT_LIST_MIN) {
      const list = this.#keptLists.wire(transaction.recipients);
      sent?.push(list);
      recipients = list.wire;
      ctx = { ...given, transaction: { ...transaction, recipients: null } };
    }
    if (!shared) return [hook, ctx, null, null, false, null, null, false, callId, recipients];
    const { key, certificateKey } = shared;
    const connection = key === undefined ? SEND : this.#keptConnections.need(key);
    const keyName = key === undefined ? null : this.#keptConnections.name(key);
    this.#keptConnections.add(key);
    // The certificate only matters when the connection itself crosses.
    if (!connection.send || certificateKey === undefined) {
      return [hook, ctx, keyName, connection.send ? shared.connection : null, connection.forget, null, null, false, callId, recipients];
    }
    const certificate = this.#keptCertificates.need(certificateKey);
    const certificateName = this.#keptCertificates.name(certificateKey);
    if (certificate.send) this.#keptCertificates.add(certificateKey);
    // With a certificate key the certificate crosses apart (or not at all), never inside the connection.
    return [
      hook, ctx, keyName, { ...shared.connection, clientCertificate: null }, connection.forget,
      certificateName, certificate.send ? shared.certificate ?? null : null, certificate.forget, callId, recipients,
    ];
  }

  /**
   * Run several calls in one entry into the isolate, one after another, all within `fastPathMs` on the
   * calling thread. Entering the isolate is most of what a quick call costs (perf: the first call after
   * other work pays for cold caches), so calls that gather during one turn of the event loop share it.
   * A call the time limit stops is run again: alone on an isolate thread when it was first (it is slow
   * by itself, as in call()), else first in a later batch; the calls after it never started; the calls
   * before it whose promise was still pending run again alone. So every stop takes at least one call out of
   * the batches for good: no batch is stopped over and over. What a call run again had started is not
   * started again: see operation-journal.ts.
   */
  callBatch(calls: readonly BatchCall[], fastPathMs: number): BatchSettled[] {
    this.#fastPathMs = fastPathMs;
    const count = calls.length;
    const wire = new Array<CallWire>(count);
    const ids = new Array<number>(count);
    let hooks = 0;
    for (let i = 0; i < count; i++) {
      const hook = calls[i]!.hook;
      if (!this.#files.has(hook)) throw new Error(`no script for hook ${hook}`);
      hooks |= hookBit(hook);
    }
    // The continuations of several calls run mixed at the end of the entry: what they start goes to a pool the
    // calls share, made when the first of them starts one (see #operate; most entries start none).
    const tag = -2 - (this.#nextTag++ % 0x3fffffff);
    const journals = count > 1 ? new Array<OperationJournal>(count) : null;
    for (let i = 0; i < count; i++) {
      const c = calls[i]!;
      const id = ++this.#nextCallId;
      ids[i] = id;
      this.#rememberCaller(id, c.connectionId, this.#files.get(c.hook)!);
      const journal = c.journal ?? new OperationJournal();
      if (journals) journals[i] = journal;
      this.#owners.set(id, journal.attempt());
      const listsBefore = this.#sentLists.length;
      wire[i] = this.#wire(c, id, this.#sentLists); // the isolate keeps them as it runs the batch, before the next call needs them
      if (this.#sentLists.length > listsBefore) this.#sentListCalls.push(i);
    }
    this.#entryPool = journals && { tag, journals, pool: null };
    // Log lines outside any call's own (a promise's callbacks, run after the batch) are held, then told.
    const run = this.#batchRun;
    run.held!.length = 0;
    this.#current = run;
    let entries: EntryWire[];
    let settledNow: Record<string, string> | null = null;
    let stopped = false;
    const cpuMark = this.#cpuClock.mark(cpuReadingMaxAgeMs(fastPathMs));
    runningCall.enter(this.#options.runningId ?? 0, hooks);
    try {
      slotEntries.eventLoop++;
      // A promise that settled within the entry (its awaits answered at once) comes out in the same copy.
      const calls = JSON.stringify(wire);
      slotEntries.callChars += calls.length;
      const out = this.#run.applySync(undefined, [calls, false, tag, this.#boxTaken], this.#entryOptions(fastPathMs)) as unknown;
      this.#boxTaken = true;
      if (out !== null && typeof out === 'object') {
        const { e, f } = out as Partial<SettledBox>;
        entries = this.#entries(e);
        settledNow = f !== null && typeof f === 'object' ? f : {};
      } else {
        entries = this.#entries(out);
      }
    } catch (e) {
      this.#boxTaken = false;
      this.#stoppedCpuMs = this.#cpuClock.since(cpuMark);
      // Which calls' facts the isolate took in is unknown now.
      this.#keptConnections.reset();
      this.#keptCertificates.reset();
      this.#keptLists.stopped();
      entries = [];
      stopped = isTimeout(e) && !this.#isolate.isDisposed;
      // The stopped entry's leftover continuations run first in the next one: code of attempts that are run
      // again (the stopped call's, and those of calls whose promise was pending: see below). Only a chain a
      // call that ended with a verdict left running (\`rate().then(…)\`, not awaited) loses its operation here.
      this.#refusing = true;
      try {
        slotEntries.eventLoop++;
        if (stopped) entries = this.#entries(this.#takeBatch.applySync(undefined, [], { timeout: fastPathMs }));
      } catch {
        stopped = false;
        // Cut off too (a loaded machine, a leftover that spins): leftovers may still be queued, and the next
        // entry would run them as its own call's code, whose journal would take their operations for its
        // own (counted twice: seen under load). Run them here, refused, or give the isolate up.
        if (!this.#isolate.isDisposed && !this.#drainLeftovers(fastPathMs)) abandon(this.#isolate);
      } finally {
        this.#refusing = false;
      }
      if (this.#entryPool?.pool) this.#retire(tag, true);
      if (!stopped) {
        runningCall.exit();
        this.#current = null;
        this.#entryPool = null;
        for (const id of ids) this.#retire(id, true);
        this.#sentLists.length = this.#sentListCalls.length = 0;
        return calls.map(() => 'alone');
      }
    }
    // The lists of the calls that ran (before a stopped one, or all) are in the isolate now.
    for (let k = 0; k < this.#sentLists.length; k++) if (entries[this.#sentListCalls[k]!] !== undefined) this.#keptLists.confirm(this.#sentLists[k]!);
    this.#sentLists.length = this.#sentListCalls.length = 0;
    // Log lines after the calls' own (a promise's callbacks) belong to the one call that returned a promise, if one did;
    // with one call in the entry, to it whatever it returned: the runtime ran its continuations under its id, as the
    // operations they start are its own (a `counter().add().then(log)` it did not wait for was logged under no connection).
    let promised = 0;
    let heldOwner = -1;
    for (let i = 0; i < entries.length; i++) {
      if (entries[i]!.outcome === null && promised++ === 0) heldOwner = i;
    }
    if (count === 1 && entries.length === 1) heldOwner = 0;
    else if (promised !== 1) heldOwner = -1;
    // Unless another call of the batch started an operation and returned its verdict: its promise's callbacks
    // (`counter().add().then(log)`, not awaited) ran there too, and their lines were told under the other client's
    // connection. Lines that cannot be told apart name no connection rather than the wrong one.
    else if (journals) for (let i = 0; i < count; i++) if (i !== heldOwner && journals[i]!.ownStarted && entries[i]?.outcome != null) heldOwner = -1;
    if (settledNow !== null) this.#fillSettled(entries, ids, settledNow);
    if (this.#entryPool?.pool && promised && !stopped) this.#rememberTag(tag, ids);
    this.#entryPool = null;
    runningCall.exit();
    this.#current = null;
    let waitingFor: Set<number> | null = null; // the calls an operation in flight will answer
    const settled = new Array<BatchSettled>(count);
    for (let i = 0; i < count; i++) {
      const { hook, connectionId } = calls[i]!;
      const file = this.#files.get(hook)!;
      const entry = entries[i];
      const id = ids[i]!;
      if (entry === undefined) {
        this.#retire(id, true); // run again (or failed): this attempt starts nothing more
        settled[i] = stopped ? (i === 0 ? 'overran' : 'again') : { failure: new ScriptFailure('error', hook, file, null, null, 'the sandbox runner returned no outcome') };
        continue;
      }
      if (stopped && entry.outcome === null) {
        // Its promise's continuation was still waiting when the stop came: it runs among the stopped attempt's
        // leftovers at the start of the next entry, where neither can be told apart, and starts nothing there
        // (see #operate). So it is run again too (its operations so far are its call's journal's) — alone, not
        // in a later batch: put back before the stopped call, it kept that call from ever being first (and so
        // from being run alone as 'overran'), and the same batch was stopped again and again until the calls'
        // deadlines (a livelock of the event loop). Each stop now takes every call before the stopped one out
        // of the batches, and the stopped call leads the next one.
        this.#retire(id, true);
        settled[i] = 'alone';
        continue;
      }
      if (entry.logs.length) for (const line of entry.logs) this.#tell(connectionId, file, line);
      if (i === heldOwner && run.held!.length) for (const line of run.held!) this.#tell(connectionId, file, line);
      if (entry.outcome === null) {
        const later = new Promise<unknown>((resolve, reject) => this.#awaiting.set(id, { hook, file, connectionId, resolve, reject }));
        // Pending without an operation to wait for (it awaits something else): no answer will bring its
        // outcome, so a delivery without answers takes it.
        waitingFor ??= new Set(this.#opOwners.values());
        if (!waitingFor.has(id)) {
          this.#collect = true;
          this.#scheduleFlush();
        }
        settled[i] = { later, cancel: () => { this.#awaiting.delete(id); this.#retire(id, true); } };
        continue;
      }
      this.#owners.delete(id);
      try {
        const value = this.#value(hook, file, entry.outcome);
        settled[i] = value === undefined ? SETTLED_UNDEFINED : { value };
      } catch (e) {
        settled[i] = { failure: e as ScriptFailure };
      }
    }
    // After a stop they are the leftovers of attempts run again, which log again.
    if (heldOwner === -1 && !stopped && run.held!.length) for (const line of run.held!) this.#tell(null, '(policy script)', line);
    run.held!.length = 0;
    // Outcomes of earlier calls whose continuations ran in this entry (they awaited something else than an answer).
    if (settledNow !== null) this.#settleTaken(settledNow);
    return settled;
  }

  /** The options of a fast-path entry (one object per budget, not one per entry). */
  #entryOptions(fastPathMs: number): EntryOptions {
    if (this.#entryOptionsFor?.timeout !== fastPathMs) this.#entryOptionsFor = { timeout: fastPathMs, result: { copy: true } };
    return this.#entryOptionsFor;
  }

  /**
   * The pool of operations that the continuations of the fast-path entry running now start under its tag
   * (several calls: see callBatch), made on the first; undefined for any other owner.
   */
  #entryPoolFor(callId: number): SharedOperations | undefined {
    const open = this.#entryPool;
    if (open === null || open.tag !== callId) return undefined;
    if (open.pool === null) {
      open.pool = new SharedOperations();
      for (const journal of open.journals) journal.share(open.pool);
      this.#owners.set(callId, open.pool);
      this.#retire(callId, false); // forgotten in turn; closed only if the entry is stopped
    }
    return open.pool;
  }

  /**
   * Empty entries into the isolate until one ends within `fastPathMs`: its microtask checkpoint runs what is
   * queued (V8 drops the rest of the queue when a checkpoint is cut off, not when an entry's own code is).
   * False when none did: the leftovers' fate is unknown.
   */
  #drainLeftovers(fastPathMs: number): boolean {
    for (let i = 0; i < DRAIN_ATTEMPTS && !this.#isolate.isDisposed; i++) {
      try {
        slotEntries.eventLoop++;
        this.#takeBatch.applySync(undefined, [], { timeout: fastPathMs });
        return true;
      } catch { /* again */ }
    }
    return false;
  }

  /**
   * The outcomes of the batch's promises that settled within its entry (their hooks awaited only a store that
   * answers at once), from the entry's SettledBox: taken out of `settled`, the rest are earlier calls'.
   */
  #fillSettled(entries: EntryWire[], ids: number[], settled: Record<string, string>): void {
    for (let i = 0; i < ids.length; i++) {
      const entry = entries[i];
      const text = settled[ids[i]!];
      if (text === undefined) continue;
      delete settled[ids[i]!];
      if (entry === undefined || entry.outcome !== null) continue;
      const outcome = parseOutcome(text);
      if (outcome !== null) entry.outcome = outcome;
    }
  }

  /**
   * A host operation the runtime asks for under `callId` (a call or an entry's tag): at most once per call.
   * null: refused to code that must not go on (a stopped attempt's, a call over by its deadline) — its
   * promise never settles and is forgotten in the isolate with the next delivery. A re-run that asks
   * something else than its stopped attempt did gets a throw (and its call fails: see Sandbox.invoke).
   */
  #operate(opId: number, callId: number, kind: string, args: readonly unknown[], live: () => string | Promise<string>): string | Promise<string> | null {
    const owner = this.#refusing ? undefined : this.#owners.get(callId) ?? this.#entryPoolFor(callId);
    try {
      if (this.#refusing) throw new OperationRefused(`${kind}: code left over from a stopped fast-path attempt`, true);
      // Unknown: the top level, or a call that already ended (a promise it did not wait for): never run again.
      return owner ? owner.start(kind, args, live) : live();
    } catch (e) {
      if (!(e instanceof OperationRefused) || !e.park) throw e;
      this.#answers.push([opId, 2, '']);
      this.#scheduleFlush();
      return null;
    }
  }

  /**
   * Done with owner `key` (a call id or an entry's tag). `close`: its code starts nothing more — it is run
   * again, failed or is over — and the answers of what it started are not delivered to it (a re-run that
   * reuses them gets them under its own operation ids). Kept a while to refuse, then forgotten.
   */
  #retire(key: number, close: boolean): void {
    const owner = this.#owners.get(key);
    if (!owner) return;
    if (close && !owner.closed) {
      owner.closed = true;
      for (const [opId, waiting] of this.#opOwners) {
        if (waiting !== key) continue;
        this.#opOwners.delete(opId);
        this.#answers.push([opId, 2, '']); // forgotten in the isolate with the next delivery
        this.#scheduleFlush();
      }
      this.#inFlight.delete(key); // its answers are not counted back (#answered no longer knows them)
    }
    if (close && owner instanceof SharedOperations) return; // already in the queue (see callBatch)
    this.#retired.push(key);
    while (this.#retired.length > RETIRED_OWNERS) this.#owners.delete(this.#retired.shift()!);
  }

  /**
   * What to tell an entry on an isolate thread about the last SettledBox: entries run in order, so the runtime
   * has heard it before any later entry (which may then assume it was taken).
   */
  #takeBoxFlag(): boolean {
    const taken = this.#boxTaken;
    this.#boxTaken = true;
    return taken;
  }

  /** True while answers are being delivered on an isolate thread: the pool must not enter the slot then. */
  get delivering(): boolean {
    return this.#delivering;
  }

  /**
   * Refuse to start one more host operation for call `callId` when it already has its allowance in flight:
   * a script must not turn one SMTP command into thousands of DNS queries or store round trips. The throw
   * rejects the script's promise (fail closed unless it catches it).
   */
  #admit(callId: number): void {
    const cap = callId >= 0 ? MAX_IN_FLIGHT_PER_CALL : MAX_IN_FLIGHT_UNATTRIBUTED;
    if ((this.#inFlight.get(callId) ?? 0) >= cap) {
      throw new RangeError(`more than ${cap} host operations (rate(), counter(), dns.resolve(), dnsbl()) in flight in one call: await them`);
    }
  }

  /** A host operation started for call `callId` (host-operations.ts): its answer is delivered when it comes. */
  #started(opId: number, callId: number, answer: Promise<string>): void {
    this.#opOwners.set(opId, callId);
    if (this.#loading) this.#topLevelOps.add(opId);
    this.#inFlight.set(callId, (this.#inFlight.get(callId) ?? 0) + 1);
    answer.then(
      (text) => this.#answered(opId, 1, String(text)),
      (e: unknown) => this.#answered(opId, 0, String((e as Error)?.message ?? e)),
    );
  }

  #answered(opId: number, ok: 0 | 1, text: string): void {
    const owner = this.#opOwners.get(opId);
    if (owner === undefined) return;
    const left = (this.#inFlight.get(owner) ?? 1) - 1;
    if (left > 0) this.#inFlight.set(owner, left);
    else this.#inFlight.delete(owner);
    if (this.lost) return;
    this.#answers.push([opId, ok, text]);
    this.#scheduleFlush();
  }

  /**
   * Answers are delivered as soon as the callback that brought them is done (at its microtasks): those of one
   * Redis reply (one command carries a turn's rate() calls) in one entry, and what the continuations reply is
   * written in this turn of the event loop (smtp/reply-batch.ts flushes in its check phase), not one turn later.
   * One such delivery per turn over all slots (DeliveryTurn); answers that come after it in the turn (another
   * reply, or an answer to that delivery's own code that came at once) wait for the turn's end (setImmediate)
   * and go in together, so a continuation answered at once again and again cannot hold the event loop.
   */
  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    if (deliveryTurn.take()) queueMicrotask(this.#flushNow);
    else setImmediate(this.#flushNow);
  }

  readonly #flushNow = (): void => {
    this.#flushScheduled = false;
    void this.#flush();
  };

  /**
   * Deliver the answers gathered, in one entry on an isolate thread with the call time limit (the
   * continuations after `await` are script code: they get the full limit, and never hold the event loop),
   * then settle the calls that ended. A delivery that fails (a continuation that does not end, memory)
   * fails the calls it answered and loses the isolate: what it was in the middle of is unknown, so the
   * other calls waiting on it fail too and the pool replaces it.
   */
  async #flush(): Promise<void> {
    if (this.lost || (this.#answers.length === 0 && !this.#collect)) return;
    if (this.#delivering) {
      this.#moveTimer ??= setTimeout(() => {
        this.#moveTimer = null;
        if (this.#delivering && !this.lost) this.#moveAnswered();
      }, BEHIND_DELIVERY_MS);
      return;
    }
    // Answers to calls started on the fast path go in on this thread, within its budget; the rest (calls
    // run on isolate threads, continuations the runtime could not name) on an isolate thread, as before.
    // Not while an isolate thread holds the isolate (a call or delivery there): this thread would wait for it.
    if (this.#fastPathMs > 0 && this.#ivmPending.size === 0) this.#deliverOnFastPath(this.#fastPathMs);
    if (this.lost || (this.#answers.length === 0 && !this.#collect)) return;
    const answers = this.#alone(this.#answers);
    this.#answers = answers === this.#answers ? [] : this.#answers.filter((a) => !answers.includes(a));
    this.#collect = false;
    const owners = new Set<number>();
    for (let i = 0; i < answers.length; i++) {
      const opId = answers[i]![0];
      const owner = this.#opOwners.get(opId);
      this.#opOwners.delete(opId);
      if (owner === undefined) continue;
      if (this.#topLevelOps.delete(opId)) answers[i] = [opId, 2, '']; // a top level's code left running (a poller)
      else if (this.#waits(owner)) owners.add(owner);
      else answers[i] = [opId, 2, '']; // forgotten in the isolate: the code waiting for it never resumes
    }
    this.#delivering = true;
    const { timeoutMs } = this.#options;
    this.#cutOff = false;
    // A continuation stuck in a builtin that ignores the time limit: isolated-vm's promise may then never
    // settle, so the slot is given up on here and now (the pool replaces it), not when it does.
    const watchdog = setTimeout(() => {
      this.#cutOff = true;
      this.#delivering = false;
      this.#failAwaiting(owners, new Error('cut off'));
    }, watchdogDelay(timeoutMs));
    // The continuations' scripts are named in the running-call mirror meanwhile, should the process die under them.
    let hooks = 0;
    const onThread: HookName[] = [];
    for (const owner of owners) {
      const a = this.#awaiting.get(owner);
      if (a) { hooks |= hookBit(a.hook); onThread.push(a.hook); }
    }
    const running = runningCall.enterAsync(this.#options.runningId ?? 0, hooks);
    this.#onThread = onThread;
    try {
      slotEntries.isolateThread++;
      const taken = this.#takeBoxFlag();
      const wire = await this.#track(this.#deliver.apply(undefined, [JSON.stringify(answers), false, taken], { timeout: timeoutMs, result: { promise: true } }));
      this.#settleTaken(wire);
    } catch (e) {
      if (!this.#cutOff) this.#failAwaiting(owners, e);
    } finally {
      runningCall.exitAsync(running);
      clearTimeout(watchdog);
      this.#delivering = false;
      this.#onThread = [];
    }
    if (this.#answers.length || this.#collect) this.#scheduleFlush();
    try { this.listener?.delivered(); } catch { /* the pool's own problem */ }
  }

  /**
   * The fast-path calls whose answers have come but wait behind a delivery still running on an isolate thread (a
   * continuation that loops runs up to the call time limit, and then loses the isolate) run again from the start
   * elsewhere (RunAgain: their journals answer what they had started, nothing counts twice). They waited for it to
   * end, and then ran again with what was left of their deadlines: under load, a 451 for clients that did nothing
   * wrong. Their answers are forgotten in this isolate, and their attempts here start nothing more.
   */
  #moveAnswered(): void {
    const moved = new Set<number>();
    for (const [opId] of this.#answers) {
      const owner = this.#opOwners.get(opId);
      if (owner !== undefined && owner >= 0 && this.#awaiting.get(owner)?.reject !== undefined) moved.add(owner);
    }
    if (moved.size === 0) return;
    for (let i = 0; i < this.#answers.length; i++) {
      const opId = this.#answers[i]![0];
      const owner = this.#opOwners.get(opId);
      if (owner === undefined || !moved.has(owner)) continue;
      this.#opOwners.delete(opId);
      this.#answers[i] = [opId, 2, ''];
    }
    for (const id of moved) {
      const waiting = this.#awaiting.get(id)!;
      this.#awaiting.delete(id);
      this.#retire(id, true);
      waiting.reject!(new RunAgain(false, 0));
    }
  }

  /**
   * The answers to deliver now: all of them, unless they are for a call run on an isolate thread and for others
   * too; then that call's alone (the rest follow in the next delivery). Should its continuation fail, that call
   * is the one whose code failed; should another's, it was not in the entry (see #failAwaiting).
   */
  #alone(answers: AnswerWire): AnswerWire {
    let call = -1;
    for (let i = 0; i < answers.length && call === -1; i++) {
      const owner = this.#opOwners.get(answers[i]![0]);
      if (owner !== undefined && owner >= 0 && this.#awaiting.has(owner) && this.#awaiting.get(owner)!.resolve === undefined) call = owner;
    }
    if (call === -1) return answers;
    const own = answers.filter((a) => this.#opOwners.get(a[0]) === call);
    return own.length === answers.length ? answers : own;
  }

  /**
   * Deliver the answers to fast-path calls (and forget those refused) in one entry on this thread, within
   * `fastPathMs`: the continuations after `await` run here, as the calls' first parts did, and the outcomes
   * that settle come out with the entry (SettledBox). Answers to other owners stay in #answers. An entry
   * stopped at the budget (a continuation that loops or is slow) runs every fast-path call it may have run
   * again from the start on an isolate thread (RunAgain: their journals answer what they had started, see
   * operation-journal.ts); what it left queued is run refused (#drainLeftovers), or the isolate is given up.
   * Any other failure (memory) loses the isolate, as a delivery on an isolate thread does.
   */
  #deliverOnFastPath(fastPathMs: number): void {
    const fast: AnswerWire = [];
    const rest: AnswerWire = [];
    const owners = new Set<number>();
    for (const answer of this.#answers) {
      const owner = this.#opOwners.get(answer[0]);
      if (owner === undefined) {
        fast.push(answer); // refused ([opId, 2]): forgotten in the isolate, nothing runs
        continue;
      }
      if (owner < 0 || this.#awaiting.get(owner)?.resolve === undefined) {
        rest.push(answer);
        continue;
      }
      this.#opOwners.delete(answer[0]);
      owners.add(owner);
      fast.push(answer);
    }
    if (fast.length === 0 && !this.#collect) return;
    this.#answers = rest;
    this.#collect = false;
    // The fast-path calls whose code may run in this entry: those answered, and those waiting for no answer
    // (they await something else, which may settle here). Every answer that came is in this entry, so a
    // fast-path call waits for one exactly when it has an operation in flight (#inFlight). No entry arrays:
    // this runs once per delivery, over every call waiting.
    let idle: number[] | null = null;
    let hooks = 0;
    this.#awaiting.forEach((waiting, id) => {
      if (waiting.resolve === undefined) return;
      if (owners.has(id)) hooks |= hookBit(waiting.hook);
      else if (!this.#inFlight.has(id)) {
        (idle ??= []).push(id);
        hooks |= hookBit(waiting.hook);
      }
    });
    // Lines the continuations log are held until the entry is known to count (a stopped one runs again).
    const run: CurrentRun = { connectionId: null, file: '(policy script)', held: [], heldFor: [] };
    this.#current = run;
    // As in callBatch: a recent reading is reused (a system call per delivery otherwise), see thread-cpu.ts.
    const cpuMark = this.#cpuClock.mark(cpuReadingMaxAgeMs(fastPathMs));
    runningCall.enter(this.#options.runningId ?? 0, hooks);
    let settled: Record<string, string> | null = null;
    let failure: unknown = null;
    try {
      slotEntries.eventLoop++;
      const out = this.#deliver.applySync(undefined, [JSON.stringify(fast), true, this.#boxTaken], { timeout: fastPathMs, result: { copy: true } }) as unknown;
      this.#boxTaken = true;
      settled = unboxed(out).settled ?? {};
    } catch (e) {
      this.#boxTaken = false;
      failure = e;
      this.#stoppedCpuMs = this.#cpuClock.since(cpuMark);
      if (isTimeout(e) && !this.#isolate.isDisposed) {
        this.#refusing = true;
        try {
          if (!this.#drainLeftovers(fastPathMs)) abandon(this.#isolate);
        } finally {
          this.#refusing = false;
        }
      }
    } finally {
      runningCall.exit();
      this.#current = null;
    }
    if (settled !== null) {
      for (let i = 0; i < run.held!.length; i++) {
        const who = this.#whose(run.heldFor![i]!);
        this.#tell(who?.connectionId ?? null, who?.file ?? '(policy script)', run.held![i]!);
      }
      this.#settleTaken(settled);
      return;
    }
    if (isTimeout(failure)) {
      // Stopped at the budget. When its leftovers could not be drained, the isolate was given up: every
      // fast-path call waiting on it runs again elsewhere.
      const again = this.#isolate.isDisposed ? new Set([...this.#awaiting.keys()]) : new Set([...owners, ...idle ?? []]);
      this.#runAgain(again, this.#stoppedCpuMs);
      if (!this.#isolate.isDisposed) return;
    }
    this.#failAwaiting(owners, failure);
  }

  /**
   * The fast-path calls `ids` run again from the start on an isolate thread (their `later` rejects with
   * RunAgain, which the pool handles); this attempt of each starts nothing more. The stop counts once per hook.
   */
  #runAgain(ids: ReadonlySet<number>, cpuMs: number): void {
    const counted = new Set<HookName>();
    for (const id of ids) {
      const waiting = this.#awaiting.get(id);
      if (waiting?.reject === undefined) continue;
      this.#awaiting.delete(id);
      this.#retire(id, true);
      const overran = !counted.has(waiting.hook);
      counted.add(waiting.hook);
      waiting.reject(new RunAgain(overran, cpuMs));
    }
  }

  /**
   * Whether code that started an operation under `owner` may resume with its answer: a call that has not ended,
   * or a batch one of whose calls has not (its tag). Code a call left running after its verdict (a promise it
   * did not wait for) may not: a loop of \`await counter().add()\` would otherwise go on for as long as answers
   * came, outside any call's deadline and past the operations allowed per call; nor may a top level's (see
   * #topLevelOps). Other code nobody can be named for (-1: a continuation that outran QUIET_TURNS in
   * isolate-runtime.ts) still resumes: a call's own continuation may be among it, and would hang until its deadline.
   */
  #waits(owner: number): boolean {
    if (owner >= 0) return this.#awaiting.has(owner);
    if (owner === -1) return true;
    const calls = this.#tagCalls.get(owner);
    if (calls?.some((id) => this.#awaiting.has(id))) return true;
    this.#tagCalls.delete(owner);
    return false;
  }

  /** Remember whose call `id` is (see #calledBy): the latest 4096 calls, long enough for what they leave running. */
  #rememberCaller(id: number, connectionId: string | null, file: string): void {
    this.#calledBy.remember(id, connectionId, file);
  }

  /** The connection and script of call `id`, waiting or ended (undefined: too long ago, or never a call). */
  #whose(id: number): { connectionId: string | null; file: string } | undefined {
    return this.#awaiting.get(id) ?? this.#calledBy.whose(id);
  }

  /** Batches remembered by tag at most (oldest forgotten first; by then their calls are long over). */
  #rememberTag(tag: number, ids: readonly number[]): void {
    this.#tagCalls.set(tag, ids);
    if (this.#tagCalls.size > 4096) this.#tagCalls.delete(this.#tagCalls.keys().next().value!);
  }

  /**
   * Settle the calls whose outcomes takeSettled() gave (JSON by call id), or a SettledBox's record (by call
   * id, each outcome's JSON text).
   */
  #settleTaken(wire: unknown): void {
    let done: Record<string, unknown> = {};
    try {
      if (typeof wire === 'string') done = JSON.parse(wire) as Record<string, RunOutcome>;
      else if (wire !== null && typeof wire === 'object') done = wire as Record<string, string>;
    } catch { /* none */ }
    for (const id of Object.keys(done)) {
      const waiting = this.#awaiting.get(Number(id));
      if (!waiting?.resolve) continue;
      const item = done[id];
      const outcome = typeof item === 'string' ? parseOutcome(item) : item as RunOutcome;
      this.#awaiting.delete(Number(id));
      this.#owners.delete(Number(id));
      try {
        waiting.resolve(this.#value(waiting.hook, waiting.file, outcome));
      } catch (e) {
        waiting.reject!(e);
      }
    }
  }

  /**
   * A delivery failed (a continuation that did not end, or memory): what the isolate was in the middle of is
   * unknown, so it is given up. A call run on an isolate thread whose answers that delivery carried fails as it
   * did (it goes in alone, see #flush: its own code failed). Every other call waiting on the isolate runs again
   * from the start, alone on an isolate thread (RunAgain: its journal answers what it had started, nothing counts
   * twice) — fast-path calls whose answers were in the delivery too, since which of their continuations failed is
   * unknown: that one fails again when it runs again, alone. Other clients' calls that merely shared the isolate
   * (or the delivery) are not failed with it: they used to get 451.
   */
  #failAwaiting(owners: ReadonlySet<number>, e: unknown): void {
    for (const [id, waiting] of this.#awaiting) {
      // A call run on an isolate thread fails there, with its isolate (see #callOnIsolateThread).
      if (!waiting.reject) {
        this.#failedWith.set(id, owners.has(id) ? e : new RunAgain(false, 0));
        continue;
      }
      this.#awaiting.delete(id);
      this.#retire(id, true);
      waiting.reject(new RunAgain(false, 0));
    }
    this.#opOwners.clear();
    this.#topLevelOps.clear();
    this.#inFlight.clear();
    this.#answers = [];
    abandon(this.#isolate);
    try { this.listener?.lost(); } catch { /* the pool's own problem */ }
  }

  /** A batch's entries from the runtime's JSON; anything malformed fails the calls it should have answered. */
  #entries(wire: unknown): EntryWire[] {
    let parsed: unknown;
    try { parsed = typeof wire === 'string' ? JSON.parse(wire) : null; } catch { parsed = null; }
    if (!Array.isArray(parsed)) return [];
    // Checked in place (the host's own copy, fresh from JSON.parse): no second array or object per call.
    const entries = parsed as EntryWire[];
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i] as Partial<EntryWire> | null;
      const logs = entry?.logs;
      if (!Array.isArray(logs) || (entry!.outcome !== null && typeof entry!.outcome !== 'object')) {
        entries.length = i;
        break;
      }
      entry!.logs = logs.length === 0 ? NO_LINES : logs.map(String);
    }
    return entries;
  }

  /** One script log line to the host's log; a failing logger does not decide a call. */
  #tell(connectionId: string | null, file: string, line: string): void {
    try { this.#options.host.log(connectionId, file, 'info', line); } catch { /* best effort */ }
  }

  /** Run one call on an isolate thread (a batch of one that waits for its promise there). */
  async #callOnIsolateThread(
    hook: HookName, file: string, ctx: object, connectionId: string | null, shared: SharedConnection | undefined, timeoutMs: number,
    journal: OperationJournal,
  ): Promise<unknown> {
    const callId = ++this.#nextCallId;
    this.#rememberCaller(callId, connectionId, file);
    const lists: SentList[] = [];
    const calls = JSON.stringify([this.#wire({ hook, ctx, connectionId, shared }, callId, lists)]);
    slotEntries.callChars += calls.length;
    let wire: unknown;
    this.#awaiting.set(callId, { hook, file, connectionId }); // for its log lines told during deliveries
    this.#owners.set(callId, journal.attempt());
    try {
      slotEntries.isolateThread++;
      wire = await this.#onIsolateThread(hook, file, connectionId, timeoutMs, () => this.#track(this.#run.apply(undefined, [calls, true, 0, this.#takeBoxFlag()], { timeout: timeoutMs, result: { promise: true } })));
    } catch (e) {
      this.#awaiting.delete(callId);
      this.#retire(callId, true);
      // Stopped, out of memory or disposed (a script's own error is an outcome): what the isolate kept is unknown.
      this.#keptConnections.reset();
      this.#keptCertificates.reset();
      this.#keptLists.stopped();
      const cause = this.#failedWith.get(callId) ?? e;
      this.#failedWith.delete(callId);
      if (cause instanceof RunAgain) throw cause; // another call's code lost the isolate under this one
      throw this.#callFailure(hook, file, cause, timeoutMs);
    }
    this.#failedWith.delete(callId);
    this.#awaiting.delete(callId);
    this.#owners.delete(callId);
    if (lists.length) this.#keptLists.confirm(lists[0]!);
    const entry = this.#entries(wire)[0];
    return this.#value(hook, file, entry?.outcome ?? null);
  }

  /**
   * `enter()` on an isolate thread, with log lines told as they come. A returned promise that never
   * settles leaves nothing running to time out: past watchdogDelay() the isolate is disposed (#cutOff).
   * The running-call mirror names the script meanwhile, should the process die under it.
   */
  async #onIsolateThread(hook: HookName, file: string, connectionId: string | null, timeoutMs: number, enter: () => Promise<unknown>): Promise<unknown> {
    this.#current = { connectionId, file };
    this.#onThread = [hook];
    const running = runningCall.enterAsync(this.#options.runningId ?? 0, hookBit(hook));
    this.#cutOff = false;
    const isolate = this.#isolate;
    let watchdog: ReturnType<typeof setTimeout>;
    let idleBefore = false;
    const cutOffIfIdle = (): void => {
      if (isolate.isDisposed) return; // given up on by the pool meanwhile
      // Still executing (descheduled on a loaded machine, or stuck in a builtin): not a promise that never settles.
      // The pool judges it from its call's deadline on (sandbox.ts, Overdue); disposing it here threw away isolates
      // that were only descheduled, and rebuilding them cost the loaded machine more CPU.
      const idle = !executing(isolate);
      // Idle at two looks, an event-loop turn apart: a task that has just ended (a descheduled thread that got the CPU
      // back) has its result on its way to this thread, which a timer can run before; cut off then, it was rebuilt.
      if (!idle || !idleBefore) {
        idleBefore = idle;
        watchdog = setTimeout(cutOffIfIdle, WATCHDOG_RECHECK_MS);
        return;
      }
      this.#cutOff = true;
      abandon(isolate);
    };
    watchdog = setTimeout(cutOffIfIdle, watchdogDelay(timeoutMs));
    try {
      return await enter();
    } finally {
      clearTimeout(watchdog);
      runningCall.exitAsync(running);
      this.#current = null;
      this.#onThread = [];
    }
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


  /**
   * Give the isolate up because the pool replaces it (a call on it is past its deadline, or it was lost): the
   * fast-path calls whose promises wait on it did nothing wrong, and run again from the start elsewhere (RunAgain,
   * their journals answering what they had started, as after a failed delivery), instead of failing with it (451
   * to their clients). Then dispose().
   */
  abandon(): Promise<void> {
    for (const [id, waiting] of this.#awaiting) {
      if (!waiting.reject) continue; // a call on an isolate thread: the one the pool gave it up for
      this.#awaiting.delete(id);
      this.#retire(id, true);
      waiting.reject(new RunAgain(false, 0));
    }
    return this.dispose();
  }

  /**
   * Give the isolate up, now: calls waiting for it reject. The promise (safe to ignore) settles once the
   * isolated-vm operations it had running have come back from their threads (bounded, see quietAfter):
   * only then does its teardown grace start.
   */
  dispose(): Promise<void> {
    this.#disposedByUs = true;
    if (this.#moveTimer !== null) clearTimeout(this.#moveTimer);
    this.#moveTimer = null;
    this.#releaseHandles();
    abandon(this.#isolate);
    for (const [id, waiting] of this.#awaiting) {
      this.#awaiting.delete(id);
      waiting.reject?.(new ScriptFailure('error', waiting.hook, waiting.file, null, null, 'the sandbox was disposed during the call'));
    }
    this.#opOwners.clear();
    this.#owners.clear();
    this.#tagCalls.clear();
    this.#topLevelOps.clear();
    this.#inFlight.clear();
    this.#answers = [];
    return quietAfter(this.#ivmPending);
  }

  /** An isolated-vm operation of this isolate, counted until it settles (see dispose). */
  #track<T>(operation: Promise<T>): Promise<T> {
    this.#ivmPending.add(operation);
    const done = (): void => { this.#ivmPending.delete(operation); };
    operation.then(done, done);
    return operation;
  }

  /** Let go of the handles into the isolate now (see releaseAll). */
  #releaseHandles(): void {
    releaseAll([this.#run, this.#deliver, this.#takeBatch, this.#takeSettled, this.#register, this.#context]);
  }

  /** Fresh isolate, context and runtime. Only ever one context per isolate: contexts are not collected promptly. */
  async #start(): Promise<void> {
    const { memoryLimitMb, host } = this.#options;
    if (this.#isolate) this.#releaseHandles(); // a previous isolate lost to its memory limit during build
    // The process cannot get a parked thread back (see newIsolate): say so, loudly, and signal it.
    this.#isolate = newIsolate(memoryLimitMb, (message) => {
      const reason = `an isolate failed catastrophically: ${message}`;
      // The code on its thread did it (a V8 out-of-memory comes long before that call's deadline, which would blame
      // it): blamed before the signal, on which a worker is replaced at once, naming the scripts to fence.
      for (const hook of this.#onThread) reportAbandonedRunning(runningCall.scriptOf(this.#options.runningId ?? 0, hook));
      try { host.log(null, '(sandbox)', 'fatal', `${reason}; this process should be restarted`); } catch { /* nothing left to tell */ }
      reportUnrecoverable(reason);
    });
    this.#context = await this.#track(this.#isolate.createContext());
    await installThreadHold(this.#context);
    const callbacks = hostCallbacks(host, () => this.#current, {
      admit: (callId) => this.#admit(callId),
      operate: (opId, callId, kind, args, live) => this.#operate(opId, callId, kind, args, live),
      started: (opId, callId, answer) => this.#started(opId, callId, answer),
      whose: (callId) => this.#whose(callId),
    });
    const runtime = await this.#track(this.#context.evalClosure(RUNTIME_CALL, [...callbacks, sharedInto(runningCall.buffer), runningCall.hookBitsJson,
      this.#options.shadow === true ? SHADOW_LOG_CLOSED_WORD : LOG_CLOSED_WORD],
      { result: { reference: true } })) as ivm.Reference<RuntimeHandle>;
    this.#run = await runtime.get('run', { reference: true });
    this.#deliver = await runtime.get('deliver', { reference: true });
    this.#takeBatch = await runtime.get('takeBatch', { reference: true });
    this.#takeSettled = await runtime.get('takeSettled', { reference: true });
    this.#register = await runtime.get('register', { reference: true });
    runtime.release();
  }

  /**
   * Load one script, named in the running-call mirror meanwhile: a process that dies under its compilation or
   * top level (a crash in a builtin) blames it, as a death during a call does, and the supervisor fences it
   * after repeated crashes instead of restarting workers into the same crash for ever.
   */
  async #load(script: ScriptSource): Promise<ScriptError | null> {
    const running = runningCall.enterAsync(this.#options.runningId ?? 0, hookBit(script.hook));
    loadStarted();
    try {
      return await this.#compileAndRun(script);
    } finally {
      runningCall.exitAsync(running);
      loadEnded();
    }
  }

  /** Compile, link and evaluate one script and register its default export; a ScriptError if any step fails. */
  async #compileAndRun({ hook, file, source }: ScriptSource): Promise<ScriptError | null> {
    if (this.#files.has(hook)) {
      return new ScriptError(file, 1, 1, `hook "${hook}" already has a script: ${this.#files.get(hook)}`);
    }
    const at = (p: Position | null, message: string): ScriptError => new ScriptError(file, p?.line ?? 1, p?.column ?? 1, message);
    let module: ivm.Module;
    try {
      module = await this.#track(this.#isolate.compileModule(source, { filename: file }));
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
    // Named as a shadow script when it is one: blamed for a stuck top level, it is fenced as one (fenceKey), not as
    // the live copy, whose fence a shadow load does not honour (a worker start crash-looped on it for good).
    const script = { hook, file, sha256: runningCall.hash(source), ...(this.#options.shadow === true ? { shadow: true as const } : {}) };
    // Each run of it would park one more thread for good: refused at once until the file changes.
    if (stuckAtLoad(script)) return new ScriptError(file, 1, 1, stuckMessage(limit, true));
    let evaluation: Promise<unknown> | undefined;
    try {
      this.#current = { connectionId: null, file };
      this.#loading = true;
      await this.#track(module.instantiate(this.#context, () => { throw new Error('imports are not allowed'); }));
      // isolated-vm stops the top level at `limit`, unless it is inside a builtin that never checks.
      evaluation = this.#track(module.evaluate({ timeout: limit, promise: true }));
      await settledWithin(evaluation, limit + LOAD_SLACK_MS);
    } catch (e) {
      if (e instanceof NeverSettled) {
        void this.dispose(); // abandoned: its thread may never come back (see unrecoverable.ts)
        // isolated-vm also loses its stop when it comes while the top level waits for a host helper (a loop of
        // lookup() or sha256()): disposing ends that at once. Only a thread that does not come back is stuck.
        if (await cameBack(evaluation!)) return new ScriptError(file, 1, 1, `top level did not finish within ${limit} ms`);
        reportAbandonedRunning(script, 'load');
        return new ScriptError(file, 1, 1, stuckMessage(limit, false));
      }
      return this.#topLevelError(file, e);
    } finally {
      this.#current = null;
      this.#loading = false;
    }
    const namespace = module.namespace;
    let fn: ivm.Reference<(ctx: unknown) => unknown>;
    try {
      fn = await this.#track(namespace.get('default', { reference: true })) as ivm.Reference<(ctx: unknown) => unknown>;
    } catch {
      // The default export is not yet defined: the top level still waits (a store or DNS answer, which comes
      // only to calls: see #topLevelOps). isolated-vm's own error named neither the file nor the reason.
      namespace.release();
      return at({ line: 1, column: 1 }, 'top level has not finished: it still waits for a promise, and the default export is not defined yet ' +
        '(a top level can wait for rate(), counter(), dns.resolve() or dnsbl() only where they answer at once: the memory store)');
    }
    namespace.release(); // no handle outlives its use (see #releaseHandles)
    if (fn.typeof !== 'function') {
      const what = fn.typeof === 'undefined' ? 'has no default export' : `exports ${/^[aeiou]/.test(fn.typeof) ? 'an' : 'a'} ${fn.typeof} as default`;
      return at(fn.typeof === 'undefined' ? { line: 1, column: 1 } : defaultExportPosition(source),
        `${what}: a policy script must \`export default function (ctx) { … }\``);
    }
    await this.#track(this.#register.apply(undefined, [hook, fn.derefInto({ release: true })]));
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
    // A timeout first: a delivery that timed out gives its isolate up, and the call it ran fails as it did.
    // The message names the call's time limit (sandbox.timeoutMs), not what was left of it for this run: a call
    // that waited for an isolate, or was stopped on the fast path first, ran on with less ("after 93 ms" for 100).
    if (isTimeout(e) && !isMemoryLimit(e)) {
      const p = e instanceof Error ? frameIn(String(e.stack), file) : null;
      return new ScriptFailure('timeout', hook, file, p?.line ?? null, p?.column ?? null, `timed out after ${this.#options.timeoutMs} ms`);
    }
    if (this.#isolate.isDisposed || isMemoryLimit(e)) {
      return new ScriptFailure('memory', hook, file, null, null, `exceeded the memory limit of ${memoryLimitMb} MB`);
    }
    // An error isolated-vm carried out itself: a promise the call left rejected without a handler (`Promise.reject(e)`,
    // an async helper not awaited). Named and located as the runner's own failures are.
    if (e instanceof Error) {
      const p = frameIn(stackFrames(String(e.stack), message), file);
      return new ScriptFailure('error', hook, file, p?.line ?? null, p?.column ?? null, e.name ? `${e.name}: ${message}` : message);
    }
    return new ScriptFailure('error', hook, file, null, null, message);
  }
}

/**
 * Whose the latest 4096 calls were, in arrays indexed by call id modulo 4096: remembered at every call, so nothing is
 * allocated or rehashed there once they are full (a Map of the latest calls, an entry added and the oldest deleted per
 * call, cost about 2 µs per call in test/bench/message-calls.ts); asked only when a line is logged after its call
 * ended. They grow with the calls made (a slot of a generation that made few calls stays small: 400 slots created and
 * disposed by reloads, each with arrays made whole at once, held 16 MB more of heap, test/sandbox/lifecycle.test.ts).
 */
class CallerRing {
  static readonly SIZE = 4096;
  readonly #ids: number[] = [];
  readonly #connections: Array<string | null> = [];
  readonly #files: string[] = [];

  remember(id: number, connectionId: string | null, file: string): void {
    const i = id % CallerRing.SIZE;
    while (this.#ids.length < i) { this.#ids.push(-1); this.#connections.push(null); this.#files.push(''); }
    this.#ids[i] = id;
    this.#connections[i] = connectionId;
    this.#files[i] = file;
  }

  whose(id: number): { connectionId: string | null; file: string } | undefined {
    const i = id % CallerRing.SIZE;
    return this.#ids[i] === id ? { connectionId: this.#connections[i]!, file: this.#files[i]! } : undefined;
  }
}

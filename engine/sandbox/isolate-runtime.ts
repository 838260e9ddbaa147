/**
 * The script-side half of the sandbox. `installRuntime` never runs in the host: its source text is
 * evaluated once in each isolate's context, where it defines the helper globals and the call runner.
 * It must therefore be self-contained — no imports, no references to anything outside its body.
 */
import type { ListWire } from './kept-lists.ts';

/** The host callbacks the runtime is given (isolated-vm Callbacks: arguments and results are copied). */
export interface RuntimeHost {
  sha1(data: string): string;
  sha256(data: string): string;
  md5(data: string): string;
  hmac(algorithm: string, key: string, data: string): string;
  lookup(table: string, key: string): unknown;
  /** `callId`: the call whose code logged, when the runtime knows it (a continuation run by deliver()); else -1. */
  log(message: string, callId: number): void;
  /**
   * Start an asynchronous host operation (see engine/sandbox/host-operations.ts) for the call `callId`
   * (-1: not known; -2 or less: one of the calls of the fast-path entry that `run` was given that tag):
   * its JSON answer when the host has it at once (a memory store), else null, and the answer comes later
   * through deliver() under `opId`. Synchronous and cheap, like lookup(): no isolated-vm promise machinery.
   * The operation's arguments cross as three primitives (every operation has three: a key or name, two
   * numbers or strings), not as an array, which isolated-vm would copy through its structured clone.
   */
  startOperation(opId: number, callId: number, kind: string, a: unknown, b: unknown, c: unknown): string | null;
}

/**
 * What deliver() takes, as JSON: per operation, its id, 1 and the JSON answer, or 0 and the error's message;
 * or 2: forget the operation without settling it (it belonged to an attempt that was stopped, whose code
 * must not run again: see operation-journal.ts).
 */
export type AnswerWire = Array<[opId: number, ok: 0 | 1 | 2, text: string]>;

/** What one call produces, copied out of the isolate as plain data. */
export type RunOutcome =
  | { ok: true; value: unknown }
  | { ok: false; error: { name: string; message: string; stack: string } };

/**
 * What crosses into an isolate: the calls of one entry, as the JSON text of a CallWire array (one string
 * crosses as one copy, and JSON.parse in the isolate costs less than isolated-vm's structured clone; no
 * handles). A single call is a batch of one. Each call: the hook, its context without `connection`, and
 * `ctx.connection` apart — given, and kept under its key for later calls, or found kept under its key
 * (null); likewise its client certificate. A `forget` flag drops everything kept of that kind first.
 */
export type CallWire = [
  hook: string, ctx: unknown,
  connectionKey: string | null, connection: unknown, connectionForget: boolean,
  certificateKey: string | null, certificate: unknown, certificateForget: boolean,
  /** The host's id of the call, unique in the isolate's life: a promise it returns settles under it (takeSettled). */
  callId: number,
  /** `ctx.transaction.recipients` when long: what changed of the list the isolate keeps (kept-lists.ts), null when it is in ctx. */
  recipients: ListWire | null,
];

/**
 * What crosses out, per call, in a JSON array: its outcome, or null when the script returned a promise
 * that has not settled yet (its outcome comes later from takeSettled(), under the call's id), and the
 * lines it logged (when they were collected rather than told as they came).
 */
export interface EntryWire { outcome: RunOutcome | null; logs: string[] }

/**
 * What an entry on the event-loop thread returns when a call's promise may settle within it: its own result
 * (`e`: the entries of run(), '' for deliver()) and the record of outcomes settled so far by call id (`f`,
 * as takeSettled() gives them, unquoted). The record is the runtime's own, still filled by the promise
 * continuations that run in the microtask checkpoint at the end of the entry: isolated-vm copies the result
 * out (`result: { copy: true }`) only after that checkpoint, so the outcomes of calls whose awaits were answered
 * at once (a memory store) come out with the entry that ran them, not in a second one. The next entry is told
 * whether the box arrived (`taken`); until it has, the outcomes stay for the next box or take.
 */
export interface SettledBox { e: string; f: Record<string, string> }

export interface RuntimeHandle {
  /** Bind a hook to its script's default export. */
  register(hook: string, fn: (ctx: unknown) => unknown): void;
  /**
   * Run the calls (JSON of CallWire[]) one after another; their entries as JSON of EntryWire[]. On the
   * event-loop thread (`wait` false) log lines are collected into the entries and a returned promise's
   * outcome is recorded for takeSettled() when it settles; each entry is also recorded as its call ends,
   * for takeBatch(). On an isolate thread (`wait` true) log lines are told as they come and the promises
   * are waited for here. `tag` (-2 or less) names the calls together: the operations their continuations
   * start at the end of the entry go to the host under it (or under the call's id when there is one call).
   * On the event-loop thread, when a call returned a promise (or outcomes are waiting), a SettledBox instead of
   * the entries' JSON; `taken`: the host got the last box (see SettledBox).
   */
  run(calls: string, wait: boolean, tag: number, taken: boolean): string | SettledBox | Promise<string>;
  /** After a run was stopped (its time limit): the entries of the calls that had ended, as JSON. */
  takeBatch(): string;
  /**
   * The outcomes (RunOutcome JSON) of the promises calls returned that have settled since the last take,
   * as a JSON object by call id; taken, they are forgotten.
   */
  takeSettled(): string;
  /**
   * Settle the operations answered (JSON of AnswerWire), one call's at a time so that the lines its
   * continuation logs name it, then takeSettled(): on an isolate thread (`fast` false) a promise of it, with the
   * call time limit; on the event-loop thread (`fast`, within the fast path's budget) a SettledBox whose record
   * the continuations fill before the entry ends. `taken`: as for run().
   */
  deliver(answers: string, fast: boolean, taken: boolean): Promise<string> | SettledBox;
}

export function installRuntime(
  hostSha1: RuntimeHost['sha1'], hostSha256: RuntimeHost['sha256'], hostMd5: RuntimeHost['md5'],
  hostHmac: RuntimeHost['hmac'], hostLookup: RuntimeHost['lookup'], hostLog: RuntimeHost['log'],
  hostStart: RuntimeHost['startOperation'], hostMessageText: (token: string, maxBytes: number) => string,
  runningMarker: SharedArrayBuffer, hookBitsJson: string, logClosedWord: number,
): RuntimeHandle {
  // Strict, as the scripts are: V8 tells a sloppy function its caller (`f.caller`) unless that caller is strict. A
  // script's own sloppy function (made with Function()) used as a getter of a thrown error's message was called by
  // the runner and walked up to its call() and run(), and through them forged another client's pending verdict.
  'use strict';
  // Intrinsics are captured before any policy script runs: a script that patches builtins can only
  // break its own results, never the runner. The runner itself uses no prototype method, iterator,
  // spread into arrays or assignment to an object a script could have set up (see containment in
  // docs/scripts.md): what crosses is built as JSON text here, by string concatenation.
  const { defineProperty, getPrototypeOf, keys, create, hasOwn, freeze, isFrozen } = Object;
  const ObjectProto = Object.prototype;
  const isArray = Array.isArray;
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const PromiseCtor = Promise;
  const PromiseProto = Promise.prototype;
  const ErrorCtor = Error;
  const TypeErrorCtor = TypeError;
  const StringCtor = String;
  const apply = Reflect.apply;
  const slice = String.prototype.slice;
  const indexOf = String.prototype.indexOf;
  const SetCtor = Set;
  const { add: setAdd, has: setHas, delete: setDelete } = Set.prototype;
  /**
   * The process's running-call marker (engine/sandbox/running-call.ts): on the event-loop thread, word 1 names the
   * hook of the call whose synchronous part runs, so that a watchdog blames a call stuck in a builtin alone, not
   * the calls batched with it. Held here only: scripts have no SharedArrayBuffer.
   */
  const runningNow = new Int32Array(runningMarker);
  const hookBits = parse(hookBitsJson) as Record<string, number>;
  const MAX_LOG = 8192;
  const MAX_LOG_LINES = 1000;
  /** What one call may log in all: each character is copied out, parsed and written by the server's thread. */
  const MAX_LOG_CHARS = 256 * 1024;
  const MAX_DEPTH = 32;
  /** A verdict is a few hundred characters; anything this long is a script bug, not a verdict. */
  const MAX_RESULT = 65536;
  /**
   * A verdict's `text` is cut to this many characters as it leaves: a reply keeps 400 bytes of it (engine/smtp/reply.ts),
   * so `reject(\`spam: ${body}\`)` is the documented 5xx with its text cut, not a failure of a return value too long.
   */
  const MAX_VERDICT_TEXT = 1000;
  /** Past this, a text is refused as too long, not cut: cutting flattens a rope (`'x'.repeat(1e8)`: 100 MB, the isolate lost). */
  const MAX_CUT_TEXT = 1 << 20;
  /** The longest error name and message whose stack (which repeats them) the runner reads: see failed(). */
  const MAX_STACK_HEADER = 4 << 20;
  // While a batched call runs, its log lines are collected here and leave with its outcome.
  let collected: Record<number, string> | null = null;
  let collectedCount = 0;
  let loggedCount = 0;
  let loggedChars = 0;

  // What V8 itself consults while it settles promises and formats stacks, for every script alike: one
  // script must not be able to change how another's promise resolves (a `then` on Object.prototype makes
  // every returned verdict object a thenable) or how its error reads. Promise and its prototype are
  // frozen; `then` on Object.prototype and Array.prototype reads as undefined, and assigning it to an
  // object makes an own property, as it would have.
  freeze(PromiseProto);
  freeze(PromiseCtor);
  const thenlessProto = (proto: object): void => {
    defineProperty(proto, 'then', {
      get: () => undefined,
      set(this: object, value: unknown) { defineProperty(this, 'then', { value, writable: true, enumerable: true, configurable: true }); },
      enumerable: false, configurable: false,
    });
  };
  thenlessProto(ObjectProto);
  thenlessProto(Array.prototype);
  defineProperty(ErrorCtor, 'prepareStackTrace', { value: undefined, writable: false, enumerable: false, configurable: false });
  defineProperty(ErrorCtor, 'stackTraceLimit', { value: 10, writable: false, enumerable: false, configurable: false });

  // Not needed by policy scripts, and each can run code or block outside a call's time limit:
  // finalizers and WebAssembly compilation complete later, Atomics.wait blocks. V8's console is a no-op.
  // Intl objects hold ICU memory outside V8's heap, which the isolate's memory limit does not see: a Segments
  // object keeps its own UTF-16 copy of the text (a 32 MB isolate kept 1.6 GB of them in ten calls, its heap at
  // 5 MB), a DateTimeFormat ~30 KB. Without Intl nothing can keep one: the locale-sensitive methods of strings,
  // numbers and dates (toLocaleString, localeCompare…) make theirs for the call only, and the collector frees them.
  for (const name of ['WebAssembly', 'FinalizationRegistry', 'SharedArrayBuffer', 'Atomics', 'console', 'Intl']) {
    Reflect.deleteProperty(globalThis, name);
  }
  fixedLengthArrayBuffers();

  /**
   * isolated-vm holds an isolate to its memory limit through V8's ArrayBuffer allocator, which a resizable
   * buffer bypasses (V8 reserves and commits its pages itself): `new ArrayBuffer(1, { maxByteLength: 2 ** 32 })`
   * then `resize(6e8)` and a fill took 600 MB of a 32 MB isolate, in every call a script liked, and kept it in
   * a module-level variable. Only fixed-length buffers exist here: the constructor, which the global and
   * ArrayBuffer.prototype.constructor (what slice() and subclasses reach) name, refuses `maxByteLength`; a
   * typed array's own buffer is always fixed-length, and transfer() keeps a buffer's kind.
   */
  function fixedLengthArrayBuffers(): void {
    const Native = ArrayBuffer;
    const construct = Reflect.construct;
    const RangeErrorCtor = RangeError;
    const Fixed = function ArrayBuffer(this: unknown, length?: unknown, opts?: unknown): ArrayBuffer {
      if (new.target === undefined) throw new TypeErrorCtor("Constructor ArrayBuffer requires 'new'");
      if (opts !== null && typeof opts === 'object' && (opts as { maxByteLength?: unknown }).maxByteLength !== undefined) {
        throw new RangeErrorCtor('ArrayBuffer(): resizable buffers (maxByteLength) are not available in policy scripts');
      }
      return construct(Native, [length], new.target) as ArrayBuffer; // the options never reach V8
    };
    defineProperty(Fixed, 'length', { value: 1, writable: false, enumerable: false, configurable: true });
    defineProperty(Fixed, 'prototype', { value: Native.prototype, writable: false, enumerable: false, configurable: false });
    defineProperty(Fixed, 'isView', { value: Native.isView, writable: true, enumerable: false, configurable: true });
    defineProperty(Fixed, Symbol.species, { get() { return this; }, enumerable: false, configurable: true });
    defineProperty(Native.prototype, 'constructor', { value: Fixed, writable: true, enumerable: false, configurable: true });
    defineProperty(globalThis, 'ArrayBuffer', { value: Fixed, writable: true, enumerable: false, configurable: true });
  }

  // Answers of lookup(), remembered: a table never changes under an isolate (a changed table file makes
  // a new generation, with new isolates), and each answer fetched from the host costs a crossing that
  // is dearer than the rest of a typical call. Bounded; a failed lookup is not remembered.
  const MAX_LOOKUPS = 4096;
  const MAX_LOOKUP_KEY = 1024;
  /**
   * The longest table name and key lookup() takes together: the host folds, hashes and parses the key on the
   * server's thread, which waits (a 8 MB key held it for tens of ms per lookup). No table key is this long.
   */
  const MAX_LOOKUP_INPUT = 65536;
  let lookups: Record<string, string | null> = create(null);
  let lookupCount = 0;

  const fail = (message: string): never => { throw new TypeErrorCtor(message); };
  const isString = (v: unknown): v is string => typeof v === 'string';

  const text = (fn: string, name: string, value: unknown): string | undefined => {
    if (value !== undefined && !isString(value)) fail(`${fn}(): ${name} must be a string`);
    return value as string | undefined;
  };

  // Copies the allowed keys of an options object, refusing unknown ones (typos) and wrong types.
  /** `within`: the option whose own options these are (deliver's `tls`), named in the errors. */
  const options = (fn: string, value: unknown, allowed: Record<string, (v: unknown) => boolean>, within?: string): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    if (value === undefined) return out;
    if (value === null || typeof value !== 'object' || isArray(value)) fail(`${fn}(): ${within ?? 'options'} must be an object, not ${formatValue(value)}`);
    const own = keys(value as object);
    for (let i = 0; i < own.length; i++) {
      const key = own[i]!;
      const v = (value as Record<string, unknown>)[key];
      if (!hasOwn(allowed, key)) fail(`${fn}(): unknown ${within === undefined ? '' : `${within} `}option "${key}"`);
      if (v === undefined) continue;
      if (!allowed[key]!(v)) fail(`${fn}(): invalid ${within === undefined ? '' : `${within}.`}${key} ${formatValue(v)}`);
      defineProperty(out, key, { value: v, writable: true, enumerable: true, configurable: true }); // no inherited setter runs
    }
    return out;
  };
  const replyCode = (lo: number) => (v: unknown): boolean => typeof v === 'number' && v % 1 === 0 && v >= lo && v <= lo + 99;
  // `<cls>.<1-3 digits>.<1-3 digits>`, checked by hand: RegExp methods are a script's to patch.
  const enhanced = (cls: string) => (v: unknown): boolean => {
    if (!isString(v) || v[0] !== cls || v[1] !== '.') return false;
    let digits = 0;
    let dots = 1;
    for (let i = 2; i < v.length; i++) {
      const c = v[i]!;
      if (c === '.') {
        if (digits === 0 || ++dots > 2) return false;
        digits = 0;
      } else if (c >= '0' && c <= '9') {
        if (++digits > 3) return false;
      } else {
        return false;
      }
    }
    return dots === 2 && digits > 0;
  };
  // The server's checks of these (engine/policy/verdict.ts), made here too so that the error names the script's line.
  /** A string of `min` to `max` characters without C0 controls (and, `c1`, without C1 controls and U+2028/9). */
  const plainText = (min: number, max: number, c1: boolean) => (v: unknown): boolean => {
    if (!isString(v) || v.length < min || v.length > max) return false;
    for (let i = 0; i < v.length; i++) {
      const c = v[i]!;
      if (c < ' ' || (c1 && ((c >= '\x7f' && c <= '\x9f') || c === '\u2028' || c === '\u2029'))) return false;
    }
    return true;
  };
  const isUsername = plainText(1, Infinity, false);
  const isHoldReason = plainText(1, 200, true);
  const isBool = (v: unknown): boolean => typeof v === 'boolean';
  const isPort = (v: unknown): boolean => typeof v === 'number' && v % 1 === 0 && v >= 1 && v <= 65535;
  /** deliver()'s dkim: a key name, a list of them (checked in full by the host: distinct, at most 8), or null. */
  const isKeyNames = (v: unknown): boolean => {
    if (isString(v) || v === null) return true;
    if (!isArray(v)) return false;
    for (let i = 0; i < v.length; i++) if (!isString(v[i])) return false;
    return true;
  };

  const isTls = (v: unknown): boolean => {
    options('deliver', v, {
      mode: (m) => m === 'none' || m === 'may' || m === 'encrypt' || m === 'verify',
      clientCertificate: (c) => isString(c) || c === null, serverName: isString, ca: isString,
    }, 'tls');
    return true;
  };

  function formatValue(value: unknown): string {
    if (isString(value)) return value;
    if (value instanceof ErrorCtor) return `${value.name}: ${value.message}`;
    if (typeof value === 'function') return `[function ${value.name || 'anonymous'}]`;
    if (typeof value === 'bigint') return `${value}n`;
    // NaN and Infinity by name: JSON would print null, and `invalid code null` misleads about a computed NaN.
    if (value === undefined || typeof value === 'symbol' || typeof value === 'number') return StringCtor(value);
    // Only an object inside itself is circular (one met twice side by side is printed twice): the objects
    // being written, outermost first, in a stack and a set. The replacer runs with the object holding `v` as
    // `this`, so the objects above it on the stack are done. Linear: a list of every object seen made a log
    // of 100,000 objects quadratic (seconds of the call's time).
    const open: Record<number, unknown> = create(null);
    let depth = 0;
    const inside = new SetCtor<unknown>();
    try {
      return stringify(value, function (this: unknown, _key, v: unknown) {
        if (typeof v === 'bigint') return `${v}n`;
        if (typeof v === 'number' && (v !== v || v === Infinity || v === -Infinity)) return StringCtor(v);
        while (depth > 0 && open[depth - 1] !== this) apply(setDelete, inside, [open[--depth]]);
        if (v !== null && typeof v === 'object') {
          if (apply(setHas, inside, [v])) return '[circular]';
          open[depth++] = v;
          apply(setAdd, inside, [v]);
        }
        return v;
      }) ?? StringCtor(value);
    } catch {
      return '[unprintable]';
    }
  }

  // Hashing runs on the server's event-loop thread, which waits for it (perf: a 10 MB string held it for
  // tens of ms per call): one call of a helper hashes at most this much.
  const MAX_HASH_INPUT = 1 << 20;
  /**
   * And one hook call, its continuations included, hashes at most this much in all: each helper call is capped,
   * but a loop of 1 MiB hmac() calls on an isolate thread kept the event loop ~90% busy (mean delay 95 ms) for
   * the call's whole time limit, every other connection waiting. Code no call can be named for (a batch's
   * continuations) shares one allowance per entry into the isolate.
   */
  const MAX_HASH_PER_CALL = 4 << 20;
  /**
   * What one hook call may spend in all, its continuations included, of a kind of work done on the server's own
   * thread. Code no call can be named for (a batch's continuations) shares one allowance per entry into the
   * isolate (reset by run() and deliver()). Calls stopped mid-way never clear theirs: past 4096 calls known, the
   * record starts again.
   */
  /**
   * The calls whose code may run unattributed in this entry: the continuations of a batch's calls run together under
   * its tag (see run()), each with its own call's allowance in principle, so theirs together is that many times one
   * call's. With one call's only, one client's continuation could use it up and fail the others' (a data hook's
   * `await rate()` then a lookup() per header: another client's lookups in the same batch threw).
   */
  let entryCalls = 1;
  /** The calls of each batch by its tag, for deliveries to their continuations (forgotten past 4096 batches). */
  let tagSizes: Record<number, number> = create(null);
  let tagSizeCount = 0;
  /** Set until the first call: the top levels, which run once per isolate within their own time limit. */
  let loading = true;
  const allowance = (limit: number, over: (fn: string) => string, atTopLevel = true) => {
    let of: Record<number, number> = create(null);
    let owners = 0;
    let unattributed = 0;
    return {
      spend(fn: string, amount: number): void {
        const owner = currentCall;
        if (loading && !atTopLevel) return;
        const before = owner >= 0 ? of[owner] : unattributed;
        const total = (before ?? 0) + amount;
        if (total > (owner >= 0 ? limit : limit * entryCalls)) fail(over(fn));
        if (owner < 0) {
          unattributed = total;
          return;
        }
        if (before === undefined && ++owners > 4096) { of = create(null); owners = 1; }
        of[owner] = total;
      },
      entered(): void { unattributed = 0; },
    };
  };
  const hashedChars = allowance(MAX_HASH_PER_CALL, (fn) => `${fn}(): more than ${MAX_HASH_PER_CALL} characters hashed in one call (hashing runs on the server's own thread)`);
  /**
   * Calls of the synchronous host helpers (hashing, a lookup() the isolate does not remember, message.text())
   * one hook call may make in all. Each waits for the server's own thread: a loop of lookup() with new keys (or of
   * sha256(''), or text(1)) on an isolate thread kept that thread 25-50% busy for its whole time limit — two such
   * calls, all of it — and isolated-vm's time limit did not stop it (a stop that comes while the host answers is
   * lost): the isolate was abandoned at the deadline and rebuilt, every call.
   */
  const MAX_HOST_CALLS_PER_CALL = 500;
  const hostCalls = allowance(MAX_HOST_CALLS_PER_CALL, (fn) =>
    `${fn}(): more than ${MAX_HOST_CALLS_PER_CALL} calls of lookup(), hashing and message.text() in one call (each runs on the server's own thread)`, false);
  /** Characters of lookup() tables and keys one call may send to the host in all: it folds, hashes and parses each. */
  const MAX_LOOKUP_CHARS_PER_CALL = 1 << 20;
  const lookupChars = allowance(MAX_LOOKUP_CHARS_PER_CALL, (fn) =>
    `${fn}(): more than ${MAX_LOOKUP_CHARS_PER_CALL} characters of tables and keys looked up in one call (each lookup runs on the server's own thread)`, false);
  function hashInput(fn: string, data: unknown, extra = 0): string {
    const value = text(fn, 'data', data) ?? fail(`${fn}(): data is required`);
    if (value.length + extra > MAX_HASH_INPUT) fail(`${fn}(): data is longer than ${MAX_HASH_INPUT} characters`);
    hashed(fn, value.length + extra);
    return value;
  }
  function hashed(fn: string, chars: number): void {
    hostCalls.spend(fn, 1);
    hashedChars.spend(fn, chars);
  }
  // Counter-store arguments, checked here so that a mistake reads as the script's own TypeError.
  const MAX_STORE_KEY = 1024;
  const MAX_STORE_SECONDS = 366 * 24 * 3600;
  const MAX_SAFE = 9007199254740991;
  const storeKey = (fn: string, key: unknown): string => {
    if (!isString(key) || key.length === 0 || key.length > MAX_STORE_KEY) fail(`${fn}: key must be a string of 1 to ${MAX_STORE_KEY} characters`);
    return key as string;
  };
  const wholeIn = (fn: string, name: string, value: unknown, lo: number, hi: number): number => {
    if (typeof value !== 'number' || value % 1 !== 0 || value < lo || value > hi) fail(`${fn}: ${name} must be a whole number from ${lo} to ${hi}, not ${formatValue(value)}`);
    return value as number;
  };
  // Asynchronous host operations (engine/sandbox/host-operations.ts): one helper is one line calling
  // hostAsync(kind, a, b, c), e.g. `resolve: (name, type, ms) => hostAsync('dns.resolve', name, type, ms)`. One the host
  // answers at once (a memory store) settles here, before the runner returns; any other parks its promise
  // under an op id, and deliver() settles it when the host has the answer (fail closed: an error rejects).
  let opSerial = 0;
  const ops: Record<number, { resolve(text: string): void; reject(error: unknown): void; owner: number }> = create(null);
  // The call running now (its synchronous part in run(), its continuation in deliver()); -1: not known.
  let currentCall = -1;
  // Set when a call parks an operation during deliver(): its continuation has stopped to wait.
  let parkedWhileDelivering = false;
  // Host operations one call may start in its life (a DNS query, a store round trip): one SMTP command must
  // not become thousands of queries. Those of a continuation the runtime cannot name (it runs after the
  // call's own turn) count against the isolate entry they run in instead, also time-bound. Each costs the
  // server's own thread 40-130 µs even when answered from a cache (its promise, timer and delivery): at 1000 a
  // call, a loop of `await dns.resolve()` on one name took 40-136 ms of that thread per SMTP command.
  const MAX_OPS_PER_CALL = 200;
  let opsOf: Record<number, number> = create(null);
  let opsOwners = 0; // calls stopped mid-way (time limit) never clear theirs: forgotten all at once past a bound
  let unattributedOps = 0;
  // `shape`: what the helper makes of the answer (rate()'s frozen result), applied here rather than after an
  // `await` of this promise in the helper: one async function and one microtask turn less per operation.
  const hostAsync = async (kind: string, a: unknown, b: unknown, c: unknown, shape?: (answer: unknown) => unknown): Promise<unknown> => {
    // currentCall also names a call's continuations run after its own turn (see run()); a batch's tag (-2 or
    // less) counts as not known here.
    const owner = currentCall;
    const started = owner >= 0 ? (opsOf[owner] ?? 0) + 1 : ++unattributedOps;
    if (started > (owner >= 0 ? MAX_OPS_PER_CALL : MAX_OPS_PER_CALL * entryCalls)) throw new ErrorCtor(`more than ${MAX_OPS_PER_CALL} host operations (rate(), counter(), dns.resolve(), dnsbl()) in one call`);
    if (owner >= 0) {
      if (started === 1 && ++opsOwners > 4096) { opsOf = create(null); opsOwners = 1; }
      opsOf[owner] = started;
    }
    const id = ++opSerial;
    const now = hostStart(id, owner, kind, a, b, c);
    if (isString(now)) return shape === undefined ? parse(now) : shape(parse(now));
    parkedWhileDelivering = true;
    const answer = parse(await new PromiseCtor<string>((resolve, reject) => { ops[id] = { resolve, reject, owner }; }));
    return shape === undefined ? answer : shape(answer);
  };
  /** A rejected promise, as an async helper's throw gives (not Promise.reject: a script can replace it). */
  const rejected = async (error: unknown): Promise<never> => { throw error; };
  const rateResult = (answer: unknown): unknown => {
    const r = answer as { allowed: boolean; count: number; resetSeconds: number };
    return freeze({ allowed: r.allowed === true, count: r.count, resetSeconds: r.resetSeconds });
  };
  const storeCall = (op: string, key: string, a: number, b: number): Promise<unknown> => hostAsync(op, key, a, b);
  const counter = (key: string) => freeze({
    get: async (): Promise<number> => storeCall('get', key, 0, 0) as Promise<number>,
    add: async (n: unknown, ttlSeconds: unknown): Promise<number> => {
      const by = wholeIn('counter().add()', 'n', n, -MAX_SAFE, MAX_SAFE);
      const ttl = wholeIn('counter().add()', 'ttlSeconds', ttlSeconds, 1, MAX_STORE_SECONDS);
      return storeCall('add', key, by, ttl) as Promise<number>;
    },
  });
  // DNS: checked here (no RegExp: its methods are a script's to patch); addresses are checked by the host.
  const DNS_TYPES: Record<string, true> = create(null);
  DNS_TYPES.A = true; DNS_TYPES.AAAA = true; DNS_TYPES.MX = true; DNS_TYPES.TXT = true; DNS_TYPES.PTR = true;
  const MAX_DNS_NAME = 1024;
  const dnsCall = async (fn: string, kind: string, first: unknown, second: unknown, opts: unknown): Promise<unknown> => {
    const o = options(fn, opts, { timeoutMs: (v) => typeof v === 'number' && v % 1 === 0 && v >= 1 && v <= 60_000, throw: isBool });
    const answer = await hostAsync(kind, first, second, (o.timeoutMs as number | undefined) ?? 60_000) as { ok: boolean; error?: string; message?: string };
    if (o.throw === true && answer.ok !== true) throw new ErrorCtor(`${fn}(): ${answer.error}: ${answer.message}`);
    return answer;
  };
  const dns = freeze({
    resolve: async (name: unknown, type: unknown, opts?: unknown): Promise<unknown> => {
      if (!isString(name) || (name as string).length === 0 || (name as string).length > MAX_DNS_NAME) fail(`dns.resolve(): name must be a string of 1 to ${MAX_DNS_NAME} characters`);
      if (!isString(type) || !hasOwn(DNS_TYPES, type as string)) fail(`dns.resolve(): type must be A, AAAA, MX, TXT or PTR, not ${formatValue(type)}`);
      return dnsCall('dns.resolve', 'dns.resolve', name, type, opts);
    },
  });
  // ctx.message of the data hook: the body is fetched from the host only when the script asks, and at most
  // this much per call (as engine/sandbox/message-texts.ts, which checks again).
  const MAX_MESSAGE_TEXT = 1024 * 1024;
  const DEFAULT_MESSAGE_TEXT = 64 * 1024;
  /**
   * And this much in all per call: each text() is read (from the spool file, for a large message) and decoded on
   * the server's thread, so a loop of text(1 MiB) on an isolate thread kept that thread a third busy for the call's
   * whole time limit. A message object is its call's own, so what it read counts here.
   */
  const MAX_MESSAGE_TEXT_PER_CALL = 4 * MAX_MESSAGE_TEXT;
  const messageOf = (token: string) => {
    let read = 0;
    return freeze({
      text: async (maxBytes?: unknown): Promise<string> => {
        const max = maxBytes === undefined ? DEFAULT_MESSAGE_TEXT : wholeIn('message.text()', 'maxBytes', maxBytes, 1, MAX_MESSAGE_TEXT);
        if (read >= MAX_MESSAGE_TEXT_PER_CALL) fail(`message.text(): more than ${MAX_MESSAGE_TEXT_PER_CALL} characters read in one call: keep what it gave`);
        hostCalls.spend('message.text', 1);
        const body = hostMessageText(token, max);
        read += body.length;
        return body;
      },
    });
  };
  const helpers = {
    dns,
    async dnsbl(zone: unknown, ip: unknown, opts?: unknown): Promise<unknown> {
      if (!isString(zone) || (zone as string).length === 0 || (zone as string).length > MAX_DNS_NAME) fail(`dnsbl(): zone must be a string of 1 to ${MAX_DNS_NAME} characters`);
      if (!isString(ip) || (ip as string).length === 0 || (ip as string).length > 64) fail('dnsbl(): ip must be an IPv4 or IPv6 address');
      return dnsCall('dnsbl', 'dnsbl', zone, ip, opts);
    },
    // Not async itself (hostAsync is): a bad argument still rejects, as an async function's throw would.
    rate(key: unknown, limit: unknown, windowSeconds: unknown): Promise<unknown> {
      let k: string, max: number, window: number;
      try {
        k = storeKey('rate()', key);
        max = wholeIn('rate()', 'limit', limit, 1, 1e9);
        window = wholeIn('rate()', 'windowSeconds', windowSeconds, 1, MAX_STORE_SECONDS);
      } catch (error) {
        return rejected(error);
      }
      return hostAsync('rate', k, max, window, rateResult);
    },
    counter: (key: unknown) => counter(storeKey('counter()', key)),
    sha1: (data: unknown): string => hostSha1(hashInput('sha1', data)),
    sha256: (data: unknown): string => hostSha256(hashInput('sha256', data)),
    md5: (data: unknown): string => hostMd5(hashInput('md5', data)),
    hmac(algorithm: unknown, key: unknown, data: unknown): string {
      if (algorithm !== 'sha1' && algorithm !== 'sha256' && algorithm !== 'sha512' && algorithm !== 'md5') {
        fail(`hmac(): algorithm must be sha1, sha256, sha512 or md5, not ${formatValue(algorithm)}`);
      }
      if (!isString(key) || !isString(data)) fail('hmac(): key and data must be strings');
      if ((key as string).length + (data as string).length > MAX_HASH_INPUT) hashInput('hmac', data, (key as string).length);
      hashed('hmac', (key as string).length + (data as string).length);
      return hostHmac(algorithm as string, key as string, data as string);
    },
    lookup(table: unknown, key: unknown): string | null {
      // A missing key (a fingerprint Postfix did not send) finds nothing; any other non-string is a mistake.
      if (isString(table) && (key === null || key === undefined)) return null;
      if (!isString(table) || !isString(key)) fail('lookup(): table and key must be strings');
      if ((table as string).length + (key as string).length > MAX_LOOKUP_INPUT) fail(`lookup(): table and key are longer than ${MAX_LOOKUP_INPUT} characters`);
      const memoKey = `${(table as string).length}:${table as string}${key as string}`; // unambiguous for any strings
      const remembered = lookups[memoKey];
      if (remembered !== undefined) return remembered;
      hostCalls.spend('lookup', 1);
      lookupChars.spend('lookup', (table as string).length + (key as string).length);
      const found = hostLookup(table as string, key as string);
      const value = isString(found) ? found : null;
      if (memoKey.length <= MAX_LOOKUP_KEY) {
        if (++lookupCount > MAX_LOOKUPS) { lookups = create(null); lookupCount = 1; }
        lookups[memoKey] = value;
      }
      return value;
    },
    log(...args: unknown[]): void {
      // This sandbox's log budget is spent for this second (running-call.ts's word 2, or 3 for shadow scripts): a
      // line would be dropped.
      if (runningNow[logClosedWord] !== 0) return;
      let line = '';
      for (let i = 0; i < args.length; i++) line += (i ? ' ' : '') + formatValue(args[i]);
      line = line.length > MAX_LOG ? `${apply(slice, line, [0, MAX_LOG]) as string}… (${line.length - MAX_LOG} more characters)` : line;
      // More lines than this in one call are dropped: each costs the event loop a crossing or a copy.
      if (++loggedCount > MAX_LOG_LINES || loggedChars > MAX_LOG_CHARS) return;
      loggedChars += line.length;
      if (loggedCount === MAX_LOG_LINES || loggedChars > MAX_LOG_CHARS) {
        line = `(further log lines of this call are dropped: more than ${MAX_LOG_LINES} lines or ${MAX_LOG_CHARS} characters)`;
      }
      if (collected === null) hostLog(line, currentCall);
      else collected[collectedCount++] = line;
    },
    accept: (opts?: unknown) => ({
      verdict: 'accept',
      // headers: the data hook's header edits, checked in full by the host (engine/policy/header-edits.ts).
      ...options('accept', opts, { username: isUsername, text: isString, headers: isArray, hold: isHoldReason }),
    }),
    reject: (reply?: unknown, opts?: unknown) => ({
      verdict: 'reject',
      ...(text('reject', 'text', reply) === undefined ? {} : { text: reply }),
      ...options('reject', opts, { code: replyCode(500), enhanced: enhanced('5'), disconnect: isBool }),
    }),
    defer: (reply?: unknown, opts?: unknown) => ({
      verdict: 'defer',
      ...(text('defer', 'text', reply) === undefined ? {} : { text: reply }),
      ...options('defer', opts, { code: replyCode(400), enhanced: enhanced('4'), disconnect: isBool }),
    }),
    deliver: (opts?: unknown) => ({
      verdict: 'deliver',
      ...options('deliver', opts, { host: isString, port: isPort, implicitTls: isBool, tls: isTls, dkim: isKeyNames }),
    }),
  };
  for (const name of keys(helpers)) {
    defineProperty(globalThis, name, { value: helpers[name as keyof typeof helpers], writable: false, enumerable: false, configurable: false });
  }
  lockDown();

  /**
   * Every script of a folder shares this context, so a builtin one script changed would change how another
   * decides (`Array.prototype.includes = () => true` in one hook makes another's relay check pass): every
   * object reachable from the globals (and the intrinsics only syntax reaches) is frozen and every global
   * binding made read-only, and the global object closed, before any script runs. Trying to change one
   * throws, in the call (or load) that tried. The properties scripts commonly shadow on their own objects (`this.name = …` in an Error subclass,
   * `o.toString = …`) stay assignable on instances: a frozen prototype's data property would forbid that.
   * RegExp's legacy statics (`RegExp.input`, `$1`…) are removed: they held the last string another call matched.
   */
  function lockDown(): void {
    const { getOwnPropertyDescriptor } = Object;
    const ownKeys = Reflect.ownKeys;
    for (const key of ['input', '$_', 'lastMatch', '$&', 'lastParen', '$+', 'leftContext', '$`', 'rightContext', "$'",
      '$1', '$2', '$3', '$4', '$5', '$6', '$7', '$8', '$9']) {
      Reflect.deleteProperty(RegExp, key);
    }
    const overridable = (proto: object, key: string): void => {
      const d = getOwnPropertyDescriptor(proto, key);
      if (d === undefined || !('value' in d)) return;
      const value: unknown = d.value;
      defineProperty(proto, key, {
        get: () => value,
        set(this: object, v: unknown) { defineProperty(this, key, { value: v, writable: true, enumerable: true, configurable: true }); },
        enumerable: d.enumerable === true, configurable: false,
      });
    };
    // Not Array.prototype.constructor (V8's species protector watches it) nor Promise's (frozen above).
    for (const key of ['constructor', 'toString', 'valueOf', 'toLocaleString']) overridable(ObjectProto, key);
    for (const key of ['constructor', 'toString']) overridable(Function.prototype, key);
    for (const E of [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError, AggregateError]) {
      for (const key of ['constructor', 'name', 'message', 'toString']) overridable(E.prototype, key);
    }
    // Object.freeze() on these two made every script about 1.5 times slower (frozen elements on the prototype
    // of every object and array; .probe-style micro-benchmark of array and object work, isolate CPU time):
    // property by property, and closed, they cost nothing measurable, but for Array.prototype.constructor,
    // which V8 watches (redefining it turns off the fast path of map, filter, slice…: ~1.2x in a script made of
    // them, nothing in one that does not use them; the runner does not). RegExp.prototype is frozen at a
    // cost that cannot be avoided: any change to it, even closing it, turns off V8's fast path of regular
    // expressions (~0.15 µs more per exec/test/replace/split, measured), but a patched exec() would decide
    // every other script's pattern checks. The runner uses no regular expression.
    const closeAlone = (proto: object): void => {
      for (const key of ownKeys(proto)) {
        const d = getOwnPropertyDescriptor(proto, key)!;
        if (d.configurable === true || d.writable === true) defineProperty(proto, key, 'value' in d ? { writable: false, configurable: false } : { configurable: false });
      }
      Object.preventExtensions(proto);
    };
    const seen = new Set<unknown>();
    const harden = (value: unknown): void => {
      if ((typeof value !== 'object' && typeof value !== 'function') || value === null || value === globalThis || seen.has(value)) return;
      seen.add(value);
      if (value === ObjectProto || value === Array.prototype) closeAlone(value);
      else freeze(value);
      harden(getPrototypeOf(value));
      for (const key of ownKeys(value)) {
        const d = getOwnPropertyDescriptor(value, key)!;
        harden(d.value);
        harden(d.get);
        harden(d.set);
      }
    };
    // Intrinsics no global names: reached through an instance of each kind.
    /* eslint-disable @typescript-eslint/no-empty-function */
    harden(function* () {});
    harden(async function () {});
    harden(async function* () {});
    /* eslint-enable @typescript-eslint/no-empty-function */
    harden([][Symbol.iterator]());
    harden(''[Symbol.iterator]());
    harden(new Map().entries());
    harden(new Set().values());
    harden(/a/[Symbol.matchAll](''));
    // Iterator helpers (not in this project's TypeScript lib yet).
    const helperOf = ([].values() as unknown as { map(fn: (x: unknown) => unknown): unknown }).map;
    harden(apply(helperOf, [].values(), [(x: unknown) => x]));
    const IteratorCtor = (globalThis as unknown as { Iterator?: { from(source: object): unknown } }).Iterator;
    if (IteratorCtor !== undefined) harden(IteratorCtor.from({ next: () => ({ done: true, value: undefined }) }));
    for (const key of ownKeys(globalThis)) {
      const d = getOwnPropertyDescriptor(globalThis, key)!;
      harden(d.value);
      harden(d.get);
      harden(d.set);
      if (d.configurable !== true) continue;
      defineProperty(globalThis, key, 'value' in d ? { writable: false, configurable: false } : { configurable: false });
    }
    // Nor can a script add a global: another script that feature-detects one (`typeof URL`) would take its
    // fake. State belongs in module-level variables.
    Object.preventExtensions(globalThis);
  }

  // A return value leaves the isolate as JSON text built here, from its own enumerable data only: no
  // toJSON, getter on a prototype, proxy or patched JSON can change what another call returns, and a
  // function or class instance is reported by where it was found.
  const ErrorProto = ErrorCtor.prototype;
  const quote = (s: string): string => stringify(s) as string; // a primitive string: no toJSON is consulted
  let notPlain: unknown = null; // the NotPlain error thrown last (instanceof would consult Symbol.hasInstance)
  const NotPlain = (message: string): unknown => (notPlain = new TypeErrorCtor(message));
  function isError(value: unknown): boolean {
    let proto: unknown = value;
    for (let i = 0; i < 16 && proto !== null && typeof proto === 'object'; i++) {
      proto = getPrototypeOf(proto);
      if (proto === ErrorProto) return true;
    }
    return false;
  }
  /** The JSON text of a return value, or undefined for undefined (as JSON.stringify would leave it out). */
  function encode(value: unknown, path: string, stack: Record<number, unknown>, depth: number): string | undefined {
    switch (typeof value) {
      case 'undefined': return undefined;
      case 'boolean': return value ? 'true' : 'false';
      case 'number':
        // JSON would make NaN null, and the server's check would then say "got null" of a code the script computed.
        if (value === value && value !== Infinity && value !== -Infinity) return `${value}`;
        throw NotPlain(`return value holds ${value} at ${path}, not a finite number`);
      case 'string':
        if (value.length > MAX_VERDICT_TEXT && value.length <= MAX_CUT_TEXT && path === 'result.text') return quote(apply(slice, value, [0, MAX_VERDICT_TEXT]) as string);
        // Refused before it is quoted: quoting `'x'.repeat(1e8)` (a rope, cheap to make) wrote 100 MB and lost the isolate.
        if (value.length > MAX_RESULT) throw NotPlain(`return value is longer than ${MAX_RESULT} characters as JSON`);
        return quote(value);
      case 'object': {
        if (value === null) return 'null';
        if (depth >= MAX_DEPTH) throw NotPlain(`return value is nested deeper than ${MAX_DEPTH} levels at ${path}`);
        for (let i = 0; i < depth; i++) if (stack[i] === value) throw NotPlain(`return value has a circular reference at ${path}`);
        stack[depth] = value;
        let out: string;
        if (isArray(value)) {
          out = '[';
          const length = (value as unknown[]).length;
          for (let i = 0; i < length; i++) {
            out += (i ? ',' : '') + (encode((value as unknown[])[i], `${path}[${i}]`, stack, depth + 1) ?? 'null');
            if (out.length > MAX_RESULT) throw NotPlain(`return value is longer than ${MAX_RESULT} characters as JSON`);
          }
          out += ']';
        } else {
          const proto = getPrototypeOf(value);
          if (proto !== ObjectProto && proto !== null) {
            let kind = 'non-plain';
            try { kind = StringCtor((proto as { constructor?: { name?: unknown } }).constructor?.name || 'class'); } catch { /* keep it vague */ }
            throw NotPlain(`return value cannot be copied out of the sandbox: ${kind} object at ${path} (only plain objects, arrays, strings, numbers, booleans and null)`);
          }
          out = '{';
          const own = keys(value);
          for (let i = 0; i < own.length; i++) {
            const key = own[i]!;
            const text = encode((value as Record<string, unknown>)[key], `${path}.${key}`, stack, depth + 1);
            if (text === undefined) continue;
            out += (out.length > 1 ? ',' : '') + quote(key) + ':' + text;
            if (out.length > MAX_RESULT) throw NotPlain(`return value is longer than ${MAX_RESULT} characters as JSON`);
          }
          out += '}';
        }
        stack[depth] = undefined;
        return out;
      }
      default:
        throw NotPlain(`return value cannot be copied out of the sandbox: ${typeof value} at ${path} (${formatValue(value)})`);
    }
  }

  /**
   * A failed outcome as JSON (see RunOutcome). A failure is logged for every call, so its text is held to a log
   * line's length, as log()'s are: `throw 'x'.repeat(2e7)` sent 20 MB to the host, parsed and logged per call.
   * The stack keeps its end, where the frames that locate the throw are (its start repeats the message).
   */
  const failure = (name: string, message: string, stack: string): string =>
    '{"ok":false,"error":{"name":' + quote(clip(name)) + ',"message":' + quote(clip(message)) +
    ',"stack":' + quote(stack.length > MAX_LOG ? apply(slice, stack, [stack.length - MAX_LOG]) as string : stack) + '}}';
  const clip = (text: string): string =>
    (text.length > MAX_LOG ? `${apply(slice, text, [0, MAX_LOG]) as string}… (${text.length - MAX_LOG} more characters)` : text);

  /**
   * The stack without the `Name: message` it starts with: the host takes the first frame in the script's file as
   * where it threw, and a message made of a client's text (`throw new Error('bad body: ' + body)`) could hold a
   * line `    at x (/etc/postern/scripts/data.ts:999:1)` of the client's making before the real frames.
   */
  const framesOf = (stack: string, message: string): string => {
    if (message.length === 0) return stack;
    const at = apply(indexOf, stack, [message]) as number;
    return at >= 0 && at <= MAX_HEADER_NAME ? apply(slice, stack, [at + message.length]) as string : stack;
  };
  /** Where in a stack the message may start: after the error's name (`RangeError: `, a subclass's own). */
  const MAX_HEADER_NAME = 256;

  function failed(error: unknown): string {
    try {
      if (error === notPlain && error !== null) return failure('TypeError', StringCtor((error as Error).message), '');
      if (isError(error)) {
        const name = StringCtor((error as Error).name);
        const message = StringCtor((error as Error).message);
        // V8 formats the stack from the name and message the error had when it was made, on the first read: a 50 MB
        // message lost the isolate to its memory limit there. Past a few MB the failure keeps its (clipped) message
        // without the frames that locate it.
        const stack = name.length + message.length > MAX_STACK_HEADER ? '' : (error as Error).stack;
        return failure(name, message, isString(stack) ? framesOf(stack as string, message) : '');
      }
      return failure('', `threw a value that is not an Error: ${formatValue(error)}`, '');
    } catch {
      return failure('Error', 'threw an exception that cannot be described', '');
    }
  }

  function succeeded(value: unknown): string {
    if (value === undefined) return '{"ok":true}'; // most calls: nothing to encode
    try {
      const text = encode(value, 'result', create(null), 0);
      return text === undefined ? '{"ok":true}' : '{"ok":true,"value":' + text + '}';
    } catch (error) {
      return failed(error);
    }
  }

  const hooks: Record<string, (ctx: unknown) => unknown> = create(null);
  // Values the host sent once and refers to by key: connection facts (kept while nothing in them changes)
  // and client certificates (the same for every connection from that device).
  let connections: Record<string, unknown> = create(null);
  let certificates: Record<string, unknown> = create(null);
  const deepFreeze = (value: unknown): unknown => {
    if (value !== null && typeof value === 'object' && !isFrozen(value)) {
      freeze(value);
      const own = keys(value);
      for (let i = 0; i < own.length; i++) deepFreeze((value as Record<string, unknown>)[own[i]!]);
    }
    return value;
  };
  const define = (target: object, key: string, value: unknown): void => {
    defineProperty(target, key, { value, writable: true, enumerable: true, configurable: true });
  };
  /**
   * The context the script sees: `connection` first, as the host builds it, then the call's own keys. What
   * crosses of the connection is read from the call's CallWire itself (the host's, parsed here: every element is
   * its own, null where nothing crosses), not copied into an object per call.
   */
  function assemble(ctx: unknown, c: CallWire): unknown {
    const connectionKey = c[2];
    const certificateKey = c[5];
    if (c[7]) certificates = create(null);
    if (c[6] !== null && certificateKey !== null) certificates[certificateKey] = deepFreeze(c[6]);
    if (c[4]) connections = create(null);
    let connection = c[3];
    if (connection !== null && typeof connection === 'object') {
      if (certificateKey !== null) define(connection, 'clientCertificate', certificates[certificateKey]);
      deepFreeze(connection); // read-only in every hook, not only where it is kept between calls
      if (connectionKey !== null) connections[connectionKey] = connection;
    } else if (connectionKey !== null) {
      connection = connections[connectionKey];
    } else {
      return ctx;
    }
    // A literal and an object spread define their properties: no setter on Object.prototype is called.
    return { connection, ...(ctx as object) };
  }

  // Long lists the host sent as their changes (kept-lists.ts), by name: `items` as of `seen` changes.
  let lists: Record<string, { items: unknown[]; seen: number }> = create(null);
  /** Plain data (as parsed from JSON) copied: the script's own copy, sharing nothing with what is kept. */
  const copyData = (value: unknown): unknown => {
    if (value === null || typeof value !== 'object') return value;
    if (isArray(value)) {
      const out = new Array<unknown>(value.length);
      for (let i = 0; i < value.length; i++) out[i] = copyData(value[i]);
      return out;
    }
    const out: Record<string, unknown> = {};
    const own = keys(value);
    for (let i = 0; i < own.length; i++) {
      const key = own[i]!;
      const item = copyData((value as Record<string, unknown>)[key]);
      // Assigned (defining each property made every copy a slow dictionary object), but a key `__proto__`
      // (JSON.parse makes it an own property) is defined: assigned, it would set the copy's prototype.
      if (key === '__proto__') define(out, key, item);
      else out[key] = item;
    }
    return out;
  };
  /**
   * `ctx.transaction.recipients` from the list the isolate keeps, brought up to date with the changes sent. The
   * script's copy is made when it first reads the property (a script that never reads it costs nothing per
   * recipient), then is an ordinary property: reading it again gives the same array, assigning replaces it.
   */
  function keptRecipients(transaction: unknown, w: ListWire): void {
    if (w[3]) lists = create(null);
    let list = lists[w[0]];
    if (list === undefined && w[1] === 0) list = lists[w[0]] = { items: [], seen: 0 };
    // The host counts only what it knows arrived: this isolate never has fewer changes. Else there is no list
    // to show, and the call fails (closed).
    if (list === undefined || list.seen < w[1]) throw new Error('the runner lost the recipient list');
    // The changes it has (sent again after a stopped entry that had taken them) are skipped.
    const changes = w[2];
    for (let i = list.seen - w[1]; i < changes.length; i++) list.items[changes[i]![0]] = changes[i]![1];
    if (w[1] + changes.length > list.seen) list.seen = w[1] + changes.length;
    if (transaction === null || typeof transaction !== 'object') return;
    const items = list.items;
    const length = w[4];
    let copy: unknown[] | undefined;
    const own = (value: unknown): void => define(transaction, 'recipients', value);
    defineProperty(transaction, 'recipients', {
      // The items past `length` are later calls' (a getter kept by a script and called later does not see them).
      get: () => {
        if (copy === undefined) {
          copy = new Array<unknown>(length);
          for (let i = 0; i < length; i++) copy[i] = copyData(items[i]);
          try {
            own(copy);
          } catch {
            // The script froze ctx.transaction: the property stays a getter, giving this same copy.
          }
        }
        return copy;
      },
      set: own,
      enumerable: true, configurable: true,
    });
  }
  // Outcomes of promises calls returned that have settled, by call id (see takeSettled()), and how many
  // (a for…in to ask whether there are any would build a key list per entry).
  let finished: Record<number, string> = create(null);
  let finishedCount = 0;
  // The record last handed out in a SettledBox: forgotten once the host says it got it.
  let handedOut: Record<number, string> | null = null;
  /** At the start of an entry: the host got the last box (`taken`), so what it carried is done with. */
  const begin = (taken: boolean): void => {
    if (taken && handedOut === finished) {
      finished = create(null);
      finishedCount = 0;
    }
    handedOut = null;
  };
  /** A SettledBox around `entries` and the live record (null-prototype objects: nothing a script set up is consulted). */
  const settledBox = (entries: string): SettledBox => {
    const out = create(null) as SettledBox;
    out.e = entries;
    out.f = finished as unknown as Record<string, string>;
    handedOut = finished;
    return out;
  };
  /** The outcome of a promise a call returned. `await` on a native promise consults nothing a script can change. */
  async function settled(result: Promise<unknown>, callId: number, owner: number): Promise<string> {
    let outcome: string;
    try {
      outcome = succeeded(await result);
    } catch (error) {
      outcome = failed(error);
    }
    delete opsOf[owner];
    if (callId >= 0) {
      finished[callId] = outcome;
      finishedCount++;
    }
    return outcome;
  }
  /**
   * Run one call; its outcome as JSON, or the runner's promise of it when the script returned a promise
   * (recorded in `finished` under `callId` when it settles, for a run on the event-loop thread).
   */
  function call(hook: string, ctx: unknown, c: CallWire, callId: number, wait: boolean): string | Promise<string> {
    loggedCount = 0;
    loggedChars = 0;
    currentCall = callId;
    try {
      if (c[9] !== null) keptRecipients((ctx as { transaction?: unknown }).transaction, c[9]);
      const context = assemble(ctx, c) as Record<string, unknown>;
      // The host sends the data hook's message as a token; the script sees ctx.message.text() instead.
      const message = hook === 'data' && context !== null && typeof context === 'object' ? context.message as { token?: unknown } | undefined : undefined;
      if (message !== null && typeof message === 'object' && isString(message.token)) define(context, 'message', messageOf(message.token));
      // Called as a plain function: as a method of `hooks` its `this` was that record, and a helo script
      // assigned `this.rcptto`, deciding every client's recipients from then on.
      const fn = hooks[hook]!;
      const result = fn(context);
      // Only a real promise (an async function's) is waited for; any other object is the verdict itself.
      if (result !== null && typeof result === 'object' && getPrototypeOf(result) === PromiseProto) {
        return settled(result as Promise<unknown>, wait ? -1 : callId, callId);
      }
      if (opsOf[callId] !== undefined) delete opsOf[callId]; // a read is cheap; a delete is a runtime call
      return succeeded(result);
    } catch (error) {
      if (opsOf[callId] !== undefined) delete opsOf[callId];
      return failed(error);
    } finally {
      currentCall = -1;
    }
  }
  // The entries of the run going on, as EntryWire JSON texts, recorded as each call ends (see takeBatch()).
  // One record for every run (a new one per run cost an allocation per entry): a slot is emptied as it is read.
  const batchDone: Record<number, string> = create(null);
  let batchCount = 0;
  // The log lines of the call running now, collected on the event-loop thread (see run()); likewise reused.
  let callLogs: Record<number, string> = create(null);
  const takeBatch = (): string => {
    if (collected !== null) callLogs = create(null); // a stopped call's lines: dropped (it runs again)
    collected = null;
    currentCall = -1;
    let done = '[';
    for (let i = 0; i < batchCount; i++) {
      done += (i ? ',' : '') + batchDone[i]!;
      batchDone[i] = '';
    }
    batchCount = 0;
    return done + ']';
  };
  const entry = (outcome: string | null, logs: string): string => '{"outcome":' + (outcome ?? 'null') + ',"logs":' + logs + '}';
  /** The entries of a run on an isolate thread, once every promise its calls returned has settled. */
  async function settledEntries(outcomes: Record<number, string | Promise<string>>, count: number): Promise<string> {
    let done = '[';
    for (let i = 0; i < count; i++) done += (i ? ',' : '') + entry(await outcomes[i]!, '[]');
    return done + ']';
  }
  const takeSettled = (): string => {
    currentCall = -1;
    let done = '{';
    const ids = keys(finished);
    for (let i = 0; i < ids.length; i++) done += (i ? ',' : '') + quote(ids[i]!) + ':' + finished[ids[i] as unknown as number]!;
    finished = create(null);
    finishedCount = 0;
    return done + '}';
  };
  /**
   * Microtask turns deliver() lets one call's continuation run before it moves on to the next call when the
   * continuation neither ends nor waits for another operation (it awaits something else): its later log lines
   * may then be told under another call's name; it runs to its end all the same.
   */
  const QUIET_TURNS = 64;
  /**
   * Microtask turns a call's name still stands, in deliver(), once the call ended: code it left running past its
   * verdict (`p.then(…).then(() => log(…))`, a promise it did not wait for) logs under it, not under no call (a line
   * without the session's cid) or under the call whose answers come next (another client's).
   */
  const LATE_TURNS = 16;
  return {
    register(hook, fn) {
      hooks[hook] = fn;
    },
    run(callsJson, wait, tag, taken) {
      begin(taken);
      loading = false;
      unattributedOps = 0;
      hashedChars.entered();
      hostCalls.entered();
      lookupChars.entered();
      batchCount = 0;
      collected = null;
      const calls = parse(callsJson) as CallWire[];
      entryCalls = calls.length > 0 ? calls.length : 1;
      if (calls.length > 1) {
        if (++tagSizeCount > 4096) { tagSizes = create(null); tagSizeCount = 1; }
        tagSizes[tag] = calls.length;
      }
      const outcomes: Record<number, string | Promise<string>> | null = wait ? create(null) : null;
      let promised = false;
      for (let i = 0; i < calls.length; i++) {
        const c = calls[i]!;
        collected = wait ? null : callLogs;
        collectedCount = 0;
        let outcome: string | Promise<string>;
        if (!wait) runningNow[1] = hookBits[c[0]] ?? 0;
        try {
          outcome = call(c[0], c[1], c, c[8], wait);
        } finally {
          collected = null;
        }
        if (outcomes !== null) {
          outcomes[i] = outcome;
          if (!isString(outcome)) promised = true;
          continue;
        }
        let lines = '[';
        for (let j = 0; j < collectedCount; j++) {
          lines += (j ? ',' : '') + quote(callLogs[j]!);
          callLogs[j] = '';
        }
        if (!isString(outcome)) promised = true;
        batchDone[batchCount++] = entry(isString(outcome) ? outcome : null, collectedCount === 0 ? '[]' : lines + ']');
      }
      // The calls' continuations run after this returns (the microtask checkpoint that ends the entry): what
      // they start is the one call's, or, with several, one of theirs (the host keeps those apart).
      const continuations = calls.length === 1 ? calls[0]![8] : tag;
      if (!wait) {
        runningNow[1] = calls.length === 1 ? runningNow[1]! : 0; // one call's continuations are its own
        const entries = takeBatch();
        currentCall = continuations;
        return promised || finishedCount > 0 ? settledBox(entries) : entries;
      }
      currentCall = continuations;
      if (promised) return settledEntries(outcomes!, calls.length);
      let done = '[';
      for (let i = 0; i < calls.length; i++) done += (i ? ',' : '') + entry(outcomes![i] as string, '[]');
      return done + ']';
    },
    takeBatch,
    takeSettled,
    deliver(answersJson, fast, taken) {
      begin(taken);
      loading = false;
      const done = settleAnswers(answersJson);
      // On the event-loop thread the continuations (and settleAnswers' own turns) run before the entry ends.
      return fast ? settledBox('') : done.then(takeSettled);
    },
  };
  /** Settle the answered operations one owner at a time (see deliver()). */
  async function settleAnswers(answersJson: string): Promise<void> {
    unattributedOps = 0;
    hashedChars.entered();
    hostCalls.entered();
    lookupChars.entered();
    const answers = parse(answersJson) as AnswerWire;
    // By the call that is waiting for them, in the order they came.
    const owners: Record<number, number> = create(null);
    const byOwner: Record<number, Record<number, [AnswerWire[number], { resolve(text: string): void; reject(error: unknown): void }]>> = create(null);
    const counts: Record<number, number> = create(null);
    let ownerCount = 0;
    for (let i = 0; i < answers.length; i++) {
      const answer = answers[i]!;
      const op = ops[answer[0]];
      if (op === undefined) continue;
      delete ops[answer[0]];
      if (answer[1] === 2) continue;
      if (byOwner[op.owner] === undefined) {
        byOwner[op.owner] = create(null);
        counts[op.owner] = 0;
        owners[ownerCount++] = op.owner;
      }
      byOwner[op.owner]![counts[op.owner]!++] = [answer, op];
    }
    entryCalls = 0;
    for (let o = 0; o < ownerCount; o++) entryCalls += owners[o]! < -1 ? tagSizes[owners[o]!] ?? 1 : 1;
    if (entryCalls === 0) entryCalls = 1;
    for (let o = 0; o < ownerCount; o++) {
      const owner = owners[o]!;
      currentCall = owner;
      parkedWhileDelivering = false;
      for (let i = 0; i < counts[owner]!; i++) {
        // No destructuring: it would go through Array.prototype[Symbol.iterator], which a script can replace.
        const pair = byOwner[owner]![i]!;
        const answer = pair[0];
        const op = pair[1];
        if (answer[1] === 1) op.resolve(answer[2]);
        else op.reject(new ErrorCtor(StringCtor(answer[2])));
      }
      // Until the call ends or waits again, its continuation runs alone, and what it logs names it.
      for (let turn = 0; turn < QUIET_TURNS && finished[owner] === undefined && !parkedWhileDelivering; turn++) await undefined;
      if (finished[owner] !== undefined) for (let turn = 0; turn < LATE_TURNS && !parkedWhileDelivering; turn++) await undefined;
      currentCall = -1;
    }
  }
}

/**
 * The script-side half of the sandbox. `installRuntime` never runs in the host: its source text is
 * evaluated once in each isolate's context, where it defines the helper globals and the call runner.
 * It must therefore be self-contained — no imports, no references to anything outside its body.
 */

/** The host callbacks the runtime is given (isolated-vm Callbacks: arguments and results are copied). */
export interface RuntimeHost {
  sha1(data: string): string;
  sha256(data: string): string;
  md5(data: string): string;
  hmac(algorithm: string, key: string, data: string): string;
  lookup(table: string, key: string): unknown;
  log(message: string): void;
}

/** What one call produces, copied out of the isolate as plain data. */
export type RunOutcome =
  | { ok: true; value: unknown }
  | { ok: false; error: { name: string; message: string; stack: string } };

/**
 * How `ctx.connection` reaches a call: the connection as JSON (when sent) and its key (to keep it, or to
 * find it kept); the client certificate's key and the certificate as JSON (when sent; it is then left
 * out of the connection). A `forget` flag drops everything kept of that kind first.
 */
export type KeptArgs = [
  connectionKey?: string, connection?: string, connectionForget?: boolean,
  certificateKey?: string, certificate?: string, certificateForget?: boolean,
];

/** The same, parsed (a batch arrives as one JSON text; see BatchCallWire). */
interface Kept {
  connectionKey?: string; connection?: unknown; connectionForget?: boolean;
  certificateKey?: string; certificate?: unknown; certificateForget?: boolean;
}

/**
 * One call of a batch, as an element of the JSON array runBatch() takes: the hook, its context (without
 * `connection`) and the kept facts as in KeptArgs, with the connection and certificate as values, not JSON.
 */
export type BatchCallWire = [
  hook: string, ctx: unknown,
  connectionKey: string | null, connection: unknown, connectionForget: boolean,
  certificateKey: string | null, certificate: unknown, certificateForget: boolean,
];

/**
 * What one call of a batch produced: its outcome, or null when the script returned a promise (kept for
 * settle() under the call's index), and the lines it logged while it ran (they leave with the outcome).
 */
export interface BatchEntry { outcome: RunOutcome | null; logs: string[] }

/** Calls cross as JSON text both ways (see RunArgs in isolate-slot.ts): outcomes are RunOutcome as JSON. */
export interface RuntimeHandle {
  /** Bind a hook to its script's default export. */
  register(hook: string, fn: (ctx: unknown) => unknown): void;
  /**
   * Call a hook with its context (JSON, without `connection`); resolves (never rejects) with the
   * outcome. `ctx.connection` comes separately (see KeptArgs): given, or kept from an earlier call under
   * its key; its certificate likewise.
   */
  run(hook: string, ctx: string, ...kept: KeptArgs): string | Promise<string>;
  /**
   * Call a hook for a synchronous caller: the outcome, or `null` when the script returned a promise,
   * which is kept for `settle()`.
   */
  runSync(hook: string, ctx: string, ...kept: KeptArgs): string | null;
  /**
   * Run each call of a batch (a JSON array of BatchCallWire) in turn; a BatchEntry per call, as a JSON
   * array. Each entry is also recorded as its call ends, for takeBatch().
   */
  runBatch(calls: string): string;
  /** After a batch was stopped (its time limit): the entries of the calls that had ended, as JSON. */
  takeBatch(): string;
  /**
   * The outcome of a promise a call returned (and forget it): the last runSync()'s without an index,
   * else that of the batch call with that index.
   */
  settle(index?: number): Promise<string>;
}

export function installRuntime(
  hostSha1: RuntimeHost['sha1'], hostSha256: RuntimeHost['sha256'], hostMd5: RuntimeHost['md5'],
  hostHmac: RuntimeHost['hmac'], hostLookup: RuntimeHost['lookup'], hostLog: RuntimeHost['log'],
): RuntimeHandle {
  // Intrinsics are captured before any policy script runs: a script that patches builtins can only
  // break its own results, never the runner.
  const { defineProperty, getPrototypeOf, keys, create, hasOwn, freeze, isFrozen } = Object;
  const ObjectProto = Object.prototype;
  const isArray = Array.isArray;
  const apply = Reflect.apply;
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const PromiseCtor = Promise;
  const promiseResolve = Promise.resolve;
  const promiseThen = Promise.prototype.then;
  const ErrorCtor = Error;
  const TypeErrorCtor = TypeError;
  const StringCtor = String;
  const MAX_LOG = 8192;
  const MAX_DEPTH = 32;
  // While a batched call runs, its log lines are collected here and leave with its outcome.
  let collected: string[] | null = null;

  // Not needed by policy scripts, and each can run code or block outside a call's time limit:
  // finalizers and WebAssembly compilation complete later, Atomics.wait blocks. V8's console is a no-op.
  for (const name of ['WebAssembly', 'FinalizationRegistry', 'SharedArrayBuffer', 'Atomics', 'console']) {
    Reflect.deleteProperty(globalThis, name);
  }

  // Answers of lookup(), remembered: a table never changes under an isolate (a changed table file makes
  // a new generation, with new isolates), and each answer fetched from the host costs a crossing that
  // is dearer than the rest of a typical call. Bounded; a failed lookup is not remembered.
  const MAX_LOOKUPS = 4096;
  const MAX_LOOKUP_KEY = 1024;
  let lookups: Record<string, string | null> = create(null);
  let lookupCount = 0;

  const fail = (message: string): never => { throw new TypeErrorCtor(message); };
  const isString = (v: unknown): v is string => typeof v === 'string';

  const text = (fn: string, name: string, value: unknown): string | undefined => {
    if (value !== undefined && !isString(value)) fail(`${fn}(): ${name} must be a string`);
    return value as string | undefined;
  };

  // Copies the allowed keys of an options object, refusing unknown ones (typos) and wrong types.
  const options = (fn: string, value: unknown, allowed: Record<string, (v: unknown) => boolean>): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    if (value === undefined) return out;
    if (value === null || typeof value !== 'object' || isArray(value)) fail(`${fn}(): options must be an object`);
    for (const key of keys(value as object)) {
      const v = (value as Record<string, unknown>)[key];
      if (!hasOwn(allowed, key)) fail(`${fn}(): unknown option "${key}"`);
      if (v === undefined) continue;
      if (!allowed[key]!(v)) fail(`${fn}(): invalid ${key} ${formatValue(v)}`);
      out[key] = v;
    }
    return out;
  };
  const replyCode = (lo: number) => (v: unknown): boolean => typeof v === 'number' && v % 1 === 0 && v >= lo && v <= lo + 99;
  const enhanced = (cls: string) => (v: unknown): boolean => isString(v) && new RegExp(`^${cls}\\.\\d{1,3}\\.\\d{1,3}$`).test(v);
  const isBool = (v: unknown): boolean => typeof v === 'boolean';
  const isPort = (v: unknown): boolean => typeof v === 'number' && v % 1 === 0 && v >= 1 && v <= 65535;
  const isTls = (v: unknown): boolean => {
    options('deliver', v, {
      mode: (m) => m === 'none' || m === 'may' || m === 'encrypt' || m === 'verify',
      clientCertificate: (c) => isString(c) || c === null, serverName: isString, ca: isString,
    });
    return true;
  };

  function formatValue(value: unknown): string {
    if (isString(value)) return value;
    if (value instanceof ErrorCtor) return `${value.name}: ${value.message}`;
    if (typeof value === 'function') return `[function ${value.name || 'anonymous'}]`;
    if (typeof value === 'bigint') return `${value}n`;
    if (value === undefined || typeof value === 'symbol') return StringCtor(value);
    const seen: unknown[] = [];
    try {
      return stringify(value, (_key, v: unknown) => {
        if (typeof v === 'bigint') return `${v}n`;
        if (v !== null && typeof v === 'object') {
          if (seen.includes(v)) return '[circular]';
          seen.push(v);
        }
        return v;
      }) ?? StringCtor(value);
    } catch {
      return '[unprintable]';
    }
  }

  const helpers = {
    sha1: (data: unknown): string => hostSha1(text('sha1', 'data', data) ?? fail('sha1(): data is required')),
    sha256: (data: unknown): string => hostSha256(text('sha256', 'data', data) ?? fail('sha256(): data is required')),
    md5: (data: unknown): string => hostMd5(text('md5', 'data', data) ?? fail('md5(): data is required')),
    hmac(algorithm: unknown, key: unknown, data: unknown): string {
      if (algorithm !== 'sha1' && algorithm !== 'sha256' && algorithm !== 'sha512' && algorithm !== 'md5') {
        fail(`hmac(): algorithm must be sha1, sha256, sha512 or md5, not ${formatValue(algorithm)}`);
      }
      if (!isString(key) || !isString(data)) fail('hmac(): key and data must be strings');
      return hostHmac(algorithm as string, key as string, data as string);
    },
    lookup(table: unknown, key: unknown): string | null {
      if (!isString(table) || !isString(key)) fail('lookup(): table and key must be strings');
      const memoKey = `${(table as string).length}:${table as string}${key as string}`; // unambiguous for any strings
      const remembered = lookups[memoKey];
      if (remembered !== undefined) return remembered;
      const found = hostLookup(table as string, key as string);
      const value = isString(found) ? found : null;
      if (memoKey.length <= MAX_LOOKUP_KEY) {
        if (++lookupCount > MAX_LOOKUPS) { lookups = create(null); lookupCount = 1; }
        lookups[memoKey] = value;
      }
      return value;
    },
    log(...args: unknown[]): void {
      let line = '';
      for (let i = 0; i < args.length; i++) line += (i ? ' ' : '') + formatValue(args[i]);
      line = line.length > MAX_LOG ? `${line.slice(0, MAX_LOG)}… (${line.length - MAX_LOG} more characters)` : line;
      if (collected === null) hostLog(line);
      else collected[collected.length] = line;
    },
    accept: (opts?: unknown) => ({
      verdict: 'accept',
      ...options('accept', opts, { username: (v) => isString(v) && v !== '', text: isString }),
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
      ...options('deliver', opts, { host: isString, port: isPort, implicitTls: isBool, tls: isTls }),
    }),
  };
  for (const name of keys(helpers)) {
    defineProperty(globalThis, name, { value: helpers[name as keyof typeof helpers], writable: false, enumerable: false, configurable: false });
  }

  // A return value leaves the isolate as a fresh copy built here, so getters, proxies and class
  // instances never reach the structured clone, and a function is reported by where it was found.
  class NotPlain extends ErrorCtor {}
  function toPlain(value: unknown, path: string, stack: unknown[]): unknown {
    switch (typeof value) {
      case 'undefined': case 'boolean': case 'number': case 'string':
        return value;
      case 'object': {
        if (value === null) return null;
        if (stack.length >= MAX_DEPTH) throw new NotPlain(`return value is nested deeper than ${MAX_DEPTH} levels at ${path}`);
        for (let i = 0; i < stack.length; i++) if (stack[i] === value) throw new NotPlain(`return value has a circular reference at ${path}`);
        stack.push(value);
        let out: Record<string, unknown> | unknown[];
        if (isArray(value)) {
          out = [];
          for (let i = 0; i < value.length; i++) out[i] = toPlain(value[i], `${path}[${i}]`, stack);
        } else {
          const proto = getPrototypeOf(value);
          if (proto !== ObjectProto && proto !== null) {
            const kind = typeof proto?.constructor === 'function' ? proto.constructor.name : 'non-plain';
            throw new NotPlain(`return value cannot be copied out of the sandbox: ${kind || 'class'} object at ${path} (only plain objects, arrays, strings, numbers, booleans and null)`);
          }
          out = {};
          for (const key of keys(value)) {
            defineProperty(out, key, { value: toPlain((value as Record<string, unknown>)[key], `${path}.${key}`, stack), enumerable: true, writable: true, configurable: true });
          }
        }
        stack.pop();
        return out;
      }
      default:
        throw new NotPlain(`return value cannot be copied out of the sandbox: ${typeof value} at ${path} (${formatValue(value)})`);
    }
  }

  function failed(error: unknown): RunOutcome {
    try {
      if (error instanceof NotPlain) return { ok: false, error: { name: 'TypeError', message: StringCtor(error.message), stack: '' } };
      if (error instanceof ErrorCtor) {
        const stack = error.stack;
        return { ok: false, error: { name: StringCtor(error.name), message: StringCtor(error.message), stack: isString(stack) ? stack : '' } };
      }
      return { ok: false, error: { name: '', message: `threw a value that is not an Error: ${formatValue(error)}`, stack: '' } };
    } catch {
      return { ok: false, error: { name: 'Error', message: 'threw an exception that cannot be described', stack: '' } };
    }
  }

  function succeeded(value: unknown): RunOutcome {
    try {
      return { ok: true, value: toPlain(value, 'result', []) };
    } catch (error) {
      return failed(error);
    }
  }

  const hooks: Record<string, (ctx: unknown) => unknown> = create(null);
  // Promises calls returned, as the runner's own promises of their outcomes: the last runSync()'s under
  // -1, a batch's under each call's index.
  let pendings: Record<number, Promise<RunOutcome>> = create(null);
  // Values the host sent once and refers to by key: connection facts (kept while nothing in them changes)
  // and client certificates (the same for every connection from that device).
  let connections: Record<string, unknown> = create(null);
  let certificates: Record<string, unknown> = create(null);
  const deepFreeze = (value: unknown): unknown => {
    if (value !== null && typeof value === 'object' && !isFrozen(value)) {
      freeze(value);
      for (const key of keys(value)) deepFreeze((value as Record<string, unknown>)[key]);
    }
    return value;
  };
  /** The context the script sees: `connection` first, as the host builds it, then the call's own keys. */
  function assemble(ctx: unknown, kept: Kept): unknown {
    if (kept.certificateForget) certificates = create(null);
    if (kept.certificate !== undefined) certificates[kept.certificateKey!] = deepFreeze(kept.certificate);
    if (kept.connectionForget) connections = create(null);
    let connection = kept.connection;
    if (connection !== null && typeof connection === 'object') {
      if (kept.certificateKey !== undefined) (connection as Record<string, unknown>).clientCertificate = certificates[kept.certificateKey];
      deepFreeze(connection); // read-only in every hook, not only where it is kept between calls
      if (kept.connectionKey !== undefined) connections[kept.connectionKey] = connection;
    } else if (kept.connectionKey !== undefined) {
      connection = connections[kept.connectionKey];
    } else {
      return ctx;
    }
    const full: Record<string, unknown> = { connection };
    for (const k of keys(ctx as object)) full[k] = (ctx as Record<string, unknown>)[k];
    return full;
  }
  /** Run one call; its outcome, or null when the script returned a promise (kept under `index`). */
  function call(hook: string, ctx: unknown, kept: Kept, index: number): RunOutcome | null {
    try {
      const result = hooks[hook]!(assemble(ctx, kept));
      if (result !== null && (typeof result === 'object' || typeof result === 'function') && typeof (result as { then?: unknown }).then === 'function') {
        const promise = apply(promiseResolve, PromiseCtor, [result]) as Promise<unknown>;
        pendings[index] = apply(promiseThen, promise, [succeeded, failed]) as Promise<RunOutcome>;
        return null;
      }
      return succeeded(result);
    } catch (error) {
      return failed(error);
    }
  }
  function callSync(hook: string, ctxJson: string, tail: KeptArgs): RunOutcome | null {
    pendings = create(null);
    collected = null; // left set only if a batch was stopped and never taken
    const [connectionKey, connection, connectionForget, certificateKey, certificate, certificateForget] = tail;
    let ctx: unknown;
    let kept: Kept;
    try {
      ctx = parse(ctxJson);
      kept = {
        connectionKey, connection: connection === undefined ? undefined : parse(connection), connectionForget,
        certificateKey, certificate: certificate === undefined ? undefined : parse(certificate), certificateForget,
      };
    } catch (error) {
      return failed(error);
    }
    return call(hook, ctx, kept, -1);
  }
  // toPlain() has made every outcome plain data, so stringify cannot throw or drop anything but undefined.
  const wire = (outcome: RunOutcome): string => stringify(outcome);
  const wirePending = (index: number): Promise<string> => {
    let promise = pendings[index];
    delete pendings[index];
    promise ??= apply(promiseResolve, PromiseCtor, [failed(new ErrorCtor('no pending call'))]) as Promise<RunOutcome>;
    return apply(promiseThen, promise, [wire]) as Promise<string>;
  };
  // The entries of the batch running now, recorded as each call ends (see takeBatch()).
  let batchDone: BatchEntry[] = [];
  const takeBatch = (): string => {
    collected = null;
    const done = stringify(batchDone);
    batchDone = [];
    return done;
  };
  return {
    register(hook, fn) {
      hooks[hook] = fn;
    },
    run(hook, ctx, ...tail) {
      const outcome = callSync(hook, ctx, tail);
      return outcome === null ? wirePending(-1) : wire(outcome);
    },
    runSync(hook, ctx, ...tail) {
      const outcome = callSync(hook, ctx, tail);
      return outcome === null ? null : wire(outcome);
    },
    runBatch(callsJson) {
      pendings = create(null);
      batchDone = [];
      const calls = parse(callsJson) as BatchCallWire[];
      for (let i = 0; i < calls.length; i++) {
        const [hook, ctx, connectionKey, connection, connectionForget, certificateKey, certificate, certificateForget] = calls[i]!;
        const logs: string[] = [];
        collected = logs;
        let outcome: RunOutcome | null;
        try {
          outcome = call(hook, ctx, {
            connectionKey: connectionKey ?? undefined, connection: connection ?? undefined, connectionForget,
            certificateKey: certificateKey ?? undefined, certificate: certificate ?? undefined, certificateForget,
          }, i);
        } finally {
          collected = null;
        }
        batchDone[i] = { outcome, logs };
      }
      return takeBatch();
    },
    takeBatch,
    settle(index = -1) {
      return wirePending(index);
    },
  };
}

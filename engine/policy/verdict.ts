/**
 * The one check of what a script returned, whichever builder or literal made it: a verdict the hook
 * allows, only the options that verdict has, each of the right type and range. A malformed verdict is a
 * script error: it fails closed like a throw (run-hook.ts). Turning a verdict into a reply is the SMTP
 * side's job (engine/smtp/verdict-replies.ts); nothing here knows about replies.
 */
import { isIP } from 'node:net';
import type { DeferVerdict, Verdict, PredeliveryVerdict, HookName } from '../sandbox/api/index.ts';
import { checkHeaderEdits, HeaderEditError } from './header-edits.ts';
import { MAX_DKIM_SIGNATURES } from '../config/local-domain.ts';

export class VerdictError extends Error {
  /** A failure of this kind, in the log and the metrics (as ScriptFailure's `error`, `timeout`, `memory`). */
  readonly kind = 'verdict';
  /** The script that returned the verdict, when the caller named it (the line of its `return` is not known). */
  file: string | undefined;
  constructor(message: string) { super(message); this.name = 'VerdictError'; }

  /** As ScriptFailure's: `file: verdict: message`, so the log line names the script as any other failure's does. */
  override toString(): string {
    return this.file === undefined ? `${this.name}: ${this.message}` : `${this.file}: verdict: ${this.message}`;
  }
}

/** What any script failure becomes: a deferral, never an accept (fail closed). Its reply is the catalogue's `policyFailed`. */
export const FAIL_CLOSED: DeferVerdict = Object.freeze({ verdict: 'defer' }) as DeferVerdict;

const ENHANCED = /^([245])\.\d{1,3}\.\d{1,3}$/;
const HOST = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;
const TLS_MODES = new Set(['none', 'may', 'encrypt', 'verify']);

/** The options each verdict has (engine/sandbox/api/verdicts.ts); any other key is a mistake. */
export const VERDICT_OPTIONS: Record<string, ReadonlySet<string>> = {
  accept: new Set(['verdict', 'username', 'text', 'headers', 'hold']),
  reject: new Set(['verdict', 'text', 'code', 'enhanced', 'disconnect']),
  defer: new Set(['verdict', 'text', 'code', 'enhanced', 'disconnect']),
  deliver: new Set(['verdict', 'host', 'port', 'implicitTls', 'tls', 'dkim']),
};
const TLS_OPTIONS = new Set(['mode', 'clientCertificate', 'serverName', 'ca']);

/**
 * Validate a script's return value; `undefined` means "apply the default". `file`: the script that returned
 * it, named by the VerdictError a malformed verdict throws.
 */
export function checkVerdict(hook: HookName, value: unknown, file?: string): Verdict | PredeliveryVerdict | undefined {
  try {
    return checked(hook, value);
  } catch (err) {
    if (err instanceof VerdictError) err.file = file;
    throw err;
  }
}

function checked(hook: HookName, value: unknown): Verdict | PredeliveryVerdict | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw new VerdictError(`${hook} returned ${Array.isArray(value) ? 'an array' : typeof value}, expected a verdict object or nothing`);
  const v = value as Record<string, unknown>;
  const allowed = hook === 'predelivery' ? ['deliver', 'reject', 'defer'] : ['accept', 'reject', 'defer'];
  const kind = v.verdict as string;
  if (!allowed.includes(kind)) {
    throw new VerdictError(`${hook} returned verdict ${JSON.stringify(v.verdict)}, expected one of ${allowed.join(', ')}`);
  }
  for (const key of Object.keys(v)) {
    if (!VERDICT_OPTIONS[kind]!.has(key)) throw new VerdictError(`${kind} verdict has no option ${JSON.stringify(key)} (allowed: ${[...VERDICT_OPTIONS[kind]!].slice(1).join(', ')})`);
  }
  if (kind === 'deliver') {
    checkDeliver(v);
    return v as unknown as PredeliveryVerdict;
  }
  if (v.text !== undefined && typeof v.text !== 'string') throw new VerdictError('verdict text must be a string');
  if (v.code !== undefined) {
    const code = v.code;
    const lo = kind === 'reject' ? 500 : 400;
    if (typeof code !== 'number' || !Number.isInteger(code) || code < lo || code > lo + 99) {
      throw new VerdictError(`${kind} code must be ${lo}-${lo + 99}, got ${JSON.stringify(code)}`);
    }
  }
  if (v.enhanced !== undefined) {
    const m = typeof v.enhanced === 'string' ? ENHANCED.exec(v.enhanced) : null;
    if (!m || m[1] !== (kind === 'reject' ? '5' : '4')) throw new VerdictError(`enhanced status code ${JSON.stringify(v.enhanced)} does not match the verdict`);
  }
  if (v.disconnect !== undefined && typeof v.disconnect !== 'boolean') throw new VerdictError('disconnect must be a boolean');
  // eslint-disable-next-line no-control-regex
  if (v.username !== undefined && (typeof v.username !== 'string' || !v.username || /[\x00-\x1f]/.test(v.username))) {
    throw new VerdictError('username must be a non-empty string without control characters');
  }
  if (v.hold !== undefined) {
    if (hook !== 'data') throw new VerdictError(`hold: only a data hook can hold a message, not ${hook}`);
    // eslint-disable-next-line no-control-regex
    if (typeof v.hold !== 'string' || v.hold.length < 1 || v.hold.length > 200 || /[\x00-\x1f\x7f-\x9f\u2028\u2029]/.test(v.hold)) {
      throw new VerdictError('hold: the reason must be a string of 1 to 200 characters without control characters');
    }
  }
  if (v.headers !== undefined) {
    if (hook !== 'data') throw new VerdictError(`headers: only a data hook can edit the message, not ${hook}`);
    try {
      return { ...v, headers: checkHeaderEdits(v.headers) } as unknown as Verdict;
    } catch (err) {
      throw err instanceof HeaderEditError ? new VerdictError(err.message) : err;
    }
  }
  return v as unknown as Verdict;
}

/** A verdict's `dkim` as a checked list of key names, or null when it is not one (a name, or distinct names). */
function dkimNames(value: unknown): string[] | null {
  const names = typeof value === 'string' ? [value] : Array.isArray(value) ? value as unknown[] : null;
  if (!names || names.length > MAX_DKIM_SIGNATURES) return null;
  if (!names.every((n): n is string => typeof n === 'string' && n.length > 0)) return null;
  return new Set(names).size === names.length ? names : null;
}

/** A deliver verdict's route and TLS options. */
function checkDeliver(v: Record<string, unknown>): void {
  if (v.host !== undefined && (typeof v.host !== 'string' || !(HOST.test(v.host) || isIP(withoutBrackets(v.host))))) throw new VerdictError(`deliver: invalid host ${JSON.stringify(v.host)}`);
  if (v.port !== undefined && (typeof v.port !== 'number' || !Number.isInteger(v.port) || v.port < 1 || v.port > 65535)) throw new VerdictError(`deliver: invalid port ${JSON.stringify(v.port)}`);
  if (v.implicitTls !== undefined && typeof v.implicitTls !== 'boolean') throw new VerdictError('deliver: implicitTls must be a boolean');
  if (v.dkim !== undefined && v.dkim !== null && !dkimNames(v.dkim)) throw new VerdictError(`deliver: dkim must be the name of a key, a list of at most ${MAX_DKIM_SIGNATURES} different names, or null`);
  if (v.tls === undefined) return;
  if (typeof v.tls !== 'object' || v.tls === null || Array.isArray(v.tls)) throw new VerdictError('deliver: tls must be an object');
  const t = v.tls as Record<string, unknown>;
  for (const k of Object.keys(t)) if (!TLS_OPTIONS.has(k)) throw new VerdictError(`deliver: unknown tls option ${k}`);
  if (t.mode !== undefined && !TLS_MODES.has(t.mode as string)) throw new VerdictError(`deliver: invalid tls mode ${JSON.stringify(t.mode)}`);
  for (const k of ['clientCertificate', 'serverName', 'ca']) {
    if (k === 'clientCertificate' && t[k] === null) continue; // no certificate, whatever the default
    if (t[k] !== undefined && (typeof t[k] !== 'string' || !t[k])) throw new VerdictError(`deliver: tls.${k} must be a non-empty string`);
  }
  if (typeof t.serverName === 'string' && !HOST.test(t.serverName)) throw new VerdictError(`deliver: invalid tls.serverName ${JSON.stringify(t.serverName)}`);
}

/** A host as a verdict may give it, `[192.0.2.1]` or `[IPv6:…]` included, without its brackets. */
export function withoutBrackets(host: string): string {
  const m = /^\[(?:ipv6:)?(.+)\]$/i.exec(host);
  return m ? m[1]! : host;
}

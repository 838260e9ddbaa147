/**
 * Turns whatever a script returned into a checked verdict, and a verdict into an SMTP reply.
 * A malformed verdict is a script error: it fails closed like a throw.
 */
import type { DeferVerdict, Verdict, PredeliveryVerdict, HookName } from '../sandbox/api/index.ts';
import { SmtpReply, sanitizeReplyText } from '../smtp/reply.ts';

export class VerdictError extends Error {
  constructor(message: string) { super(message); this.name = 'VerdictError'; }
}

/** What any script failure becomes: a deferral, never an accept (fail closed). */
export const FAIL_CLOSED: DeferVerdict = Object.freeze({
  verdict: 'defer', code: 451, enhanced: '4.3.0', text: 'Temporary policy failure, try again later',
}) as DeferVerdict;

const ENHANCED = /^([245])\.\d{1,3}\.\d{1,3}$/;

/** Validate a script's return value; `undefined` means "apply the default". */
export function checkVerdict(hook: HookName, value: unknown): Verdict | PredeliveryVerdict | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object') throw new VerdictError(`${hook} returned ${typeof value}, expected a verdict object or nothing`);
  const v = value as Record<string, unknown>;
  const allowed = hook === 'predelivery' ? ['deliver', 'reject', 'defer'] : ['accept', 'reject', 'defer'];
  if (!allowed.includes(v.verdict as string)) {
    throw new VerdictError(`${hook} returned verdict ${JSON.stringify(v.verdict)}, expected one of ${allowed.join(', ')}`);
  }
  if (v.text !== undefined && typeof v.text !== 'string') throw new VerdictError('verdict text must be a string');
  if (v.code !== undefined) {
    const code = v.code;
    const lo = v.verdict === 'reject' ? 500 : 400;
    if (typeof code !== 'number' || !Number.isInteger(code) || code < lo || code > lo + 99) {
      throw new VerdictError(`${v.verdict} code must be ${lo}-${lo + 99}, got ${JSON.stringify(code)}`);
    }
  }
  if (v.enhanced !== undefined) {
    const m = typeof v.enhanced === 'string' ? ENHANCED.exec(v.enhanced) : null;
    if (!m || m[1] !== (v.verdict === 'reject' ? '5' : '4')) throw new VerdictError(`enhanced status code ${JSON.stringify(v.enhanced)} does not match the verdict`);
  }
  if (v.username !== undefined && (typeof v.username !== 'string' || !v.username || /[\x00-\x1f]/.test(v.username))) {
    throw new VerdictError('username must be a non-empty string without control characters');
  }
  return v as unknown as Verdict;
}

/** Default reply per hook for a reject or defer that did not choose its own code. */
const REJECT_DEFAULTS: Record<string, [number, string, string]> = {
  connect: [554, '5.7.1', 'Connection refused by policy'],
  helo: [550, '5.7.1', 'HELO refused by policy'],
  auth: [535, '5.7.8', 'Authentication credentials invalid'],
  mailfrom: [550, '5.7.1', 'Sender refused by policy'],
  rcptto: [550, '5.7.1', 'Recipient refused by policy'],
  data: [550, '5.7.1', 'Message refused by policy'],
};

/** The reply for a reject/defer verdict in `hook`. */
export function verdictReply(hook: HookName, v: Verdict): SmtpReply | null {
  if (v.verdict === 'accept') return null;
  const [rcode, renh, rtext] = REJECT_DEFAULTS[hook] ?? [550, '5.7.1', 'Refused by policy'];
  if (v.verdict === 'reject') {
    const code = v.code ?? rcode;
    return new SmtpReply(code, v.enhanced ?? (v.code ? `5.${code === 535 ? '7.8' : '7.1'}` : renh),
      sanitizeReplyText(v.text ?? rtext), { disconnect: !!v.disconnect, reason: `script ${hook}: reject` });
  }
  const code = v.code ?? (v.disconnect ? 421 : hook === 'auth' ? 454 : 451);
  const enhanced = v.enhanced ?? (code === 454 || code === 421 ? '4.7.0' : '4.3.0');
  return new SmtpReply(code, enhanced, sanitizeReplyText(v.text ?? 'Temporary policy failure, try again later'), { disconnect: !!v.disconnect || code === 421, reason: v === FAIL_CLOSED ? `script ${hook} failed (fail closed)` : `script ${hook}: defer` });
}

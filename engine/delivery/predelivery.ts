/**
 * The pre-delivery hook: builds the PredeliveryContext for one destination group, runs the `predelivery`
 * script of the top-level scripts folder, and turns its verdict into a checked decision. Script failures
 * and malformed verdicts fail closed (retry later), like every other hook.
 */
import { isIP } from 'node:net';
import type { PolicyGeneration } from '../policy/generation.ts';
import { runHook } from '../policy/run-hook.ts';
import type { DeliverVerdict, PredeliveryContext, PredeliveryVerdict } from '../sandbox/api/index.ts';
import type { Logger } from '../logging/logger.ts';
import { DeliveryFailure } from './outcome.ts';
import type { TlsPolicy } from './outbound-tls.ts';

export type PredeliveryDecision =
  | { action: 'deliver'; host?: string; port?: number; implicitTls?: boolean; tls: DecidedTls }
  | { action: 'reject' | 'defer'; failure: DeliveryFailure };

/** A script's TLS choices; `clientCertificate: null` means none, even where the configuration has a default. */
export type DecidedTls = Omit<Partial<TlsPolicy>, 'clientCertificate'> & { clientCertificate?: string | null };

type DeliverDecision = Extract<PredeliveryDecision, { action: 'deliver' }>;
const DEFAULT: DeliverDecision = Object.freeze({ action: 'deliver', tls: Object.freeze({}) }) as DeliverDecision;
const MODES = new Set(['none', 'may', 'encrypt', 'verify']);
const HOST = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;

/** Whether the generation has a pre-delivery script (the context is only built when it does). */
export function hasPredelivery(generation: PolicyGeneration): boolean {
  return generation.hasScript(undefined, 'predelivery');
}

export async function runPredelivery(generation: PolicyGeneration, ctx: PredeliveryContext, log: Logger): Promise<PredeliveryDecision> {
  if (!hasPredelivery(generation)) return DEFAULT;
  const verdict = await runHook(generation, undefined, 'predelivery', ctx, ctx.message.id, log) as PredeliveryVerdict | undefined;
  if (!verdict) return DEFAULT;
  if (verdict.verdict === 'reject') {
    const code = verdict.code ?? 550;
    const enhanced = verdict.enhanced ?? '5.7.1';
    return { action: 'reject', failure: new DeliveryFailure(`${code} ${enhanced} ${clean(verdict.text ?? 'Delivery refused by policy')}`, { permanent: true, enhanced }) };
  }
  if (verdict.verdict === 'defer') {
    const code = verdict.code ?? 451;
    const enhanced = verdict.enhanced ?? '4.3.0';
    return { action: 'defer', failure: new DeliveryFailure(`${code} ${enhanced} ${clean(verdict.text ?? 'Delivery deferred by policy')}`, { permanent: false, enhanced }) };
  }
  const problem = checkDeliver(verdict);
  if (problem) {
    log.error({ hook: 'predelivery', id: ctx.message.id, err: problem }, `policy script predelivery failed: ${problem}`);
    return { action: 'defer', failure: new DeliveryFailure('451 4.3.0 Temporary policy failure, try again later', { permanent: false, enhanced: '4.3.0' }) };
  }
  const tls: DecidedTls = {};
  if (verdict.tls?.mode) tls.mode = verdict.tls.mode;
  if (verdict.tls?.clientCertificate !== undefined) tls.clientCertificate = verdict.tls.clientCertificate;
  if (verdict.tls?.serverName !== undefined) tls.serverName = verdict.tls.serverName;
  if (verdict.tls?.ca !== undefined) tls.ca = verdict.tls.ca;
  return {
    action: 'deliver', tls,
    ...(verdict.host !== undefined ? { host: stripBrackets(verdict.host) } : {}),
    ...(verdict.port !== undefined ? { port: verdict.port } : {}),
    ...(verdict.implicitTls !== undefined ? { implicitTls: verdict.implicitTls } : {}),
  };
}

/** A literal `{ verdict: 'deliver', … }` skips the builder's checks: check it here. */
function checkDeliver(v: DeliverVerdict): string | null {
  const known = new Set(['verdict', 'host', 'port', 'implicitTls', 'tls']);
  for (const k of Object.keys(v)) if (!known.has(k)) return `deliver: unknown option ${k}`;
  if (v.host !== undefined && (typeof v.host !== 'string' || !(HOST.test(v.host) || isIP(stripBrackets(v.host))))) return `deliver: invalid host ${JSON.stringify(v.host)}`;
  if (v.port !== undefined && (typeof v.port !== 'number' || !Number.isInteger(v.port) || v.port < 1 || v.port > 65535)) return `deliver: invalid port ${JSON.stringify(v.port)}`;
  if (v.implicitTls !== undefined && typeof v.implicitTls !== 'boolean') return 'deliver: implicitTls must be a boolean';
  if (v.tls !== undefined) {
    if (typeof v.tls !== 'object' || v.tls === null) return 'deliver: tls must be an object';
    const t = v.tls as Record<string, unknown>;
    for (const k of Object.keys(t)) if (!['mode', 'clientCertificate', 'serverName', 'ca'].includes(k)) return `deliver: unknown tls option ${k}`;
    if (t.mode !== undefined && !MODES.has(t.mode as string)) return `deliver: invalid tls mode ${JSON.stringify(t.mode)}`;
    for (const k of ['clientCertificate', 'serverName', 'ca']) {
      if (k === 'clientCertificate' && t[k] === null) continue; // no certificate, whatever the default
      if (t[k] !== undefined && (typeof t[k] !== 'string' || !t[k])) return `deliver: tls.${k} must be a non-empty string`;
    }
    if (typeof t.serverName === 'string' && !HOST.test(t.serverName)) return `deliver: invalid tls.serverName ${JSON.stringify(t.serverName)}`;
  }
  return null;
}

function stripBrackets(host: string): string {
  const m = /^\[(?:ipv6:)?(.+)\]$/i.exec(host);
  return m ? m[1]! : host;
}

function clean(text: string): string {
  return text.replace(/[\x00-\x1f\x7f]/g, ' ').slice(0, 400);
}

/**
 * The pre-delivery hook: builds the PredeliveryContext for one destination group, runs the `predelivery`
 * script of the top-level scripts folder, and turns its verdict into a decision. The verdict was checked
 * by policy/verdict.ts; script failures and malformed verdicts fail closed (retry later), like every other
 * hook. A reject or defer takes its reply from the verdict table (smtp/verdict-replies.ts).
 */
import type { PolicyGeneration } from '../policy/generation.ts';
import { runHook } from '../policy/run-hook.ts';
import { withoutBrackets } from '../policy/verdict.ts';
import { verdictReply } from '../smtp/verdict-replies.ts';
import type { PredeliveryContext, PredeliveryVerdict } from '../sandbox/api/index.ts';
import type { Logger } from '../logging/logger.ts';
import { DeliveryFailure } from './outcome.ts';
import type { TlsPolicy } from './outbound-tls.ts';
import { declared } from './declared.ts';
import type { DeliveryConfig } from '../config/schema.ts';

export type PredeliveryDecision =
  | { action: 'deliver'; host?: string; port?: number; implicitTls?: boolean; tls: DecidedTls; dkim?: readonly string[] }
  | { action: 'reject' | 'defer'; failure: DeliveryFailure; reason: string | undefined };

/** A script's TLS choices; `clientCertificate: null` means none, even where the configuration has a default. */
export type DecidedTls = Omit<Partial<TlsPolicy>, 'clientCertificate'> & { clientCertificate?: string | null };

type DeliverDecision = Extract<PredeliveryDecision, { action: 'deliver' }>;
const DEFAULT: DeliverDecision = Object.freeze({ action: 'deliver', tls: Object.freeze({}) }) as DeliverDecision;

/** Whether the generation has a pre-delivery script (the context is only built when it does). */
export function hasPredelivery(generation: PolicyGeneration): boolean {
  return generation.hasScript(undefined, 'predelivery');
}

export async function runPredelivery(generation: PolicyGeneration, ctx: PredeliveryContext, log: Logger): Promise<PredeliveryDecision> {
  if (!hasPredelivery(generation)) return DEFAULT;
  const verdict = await runHook(generation, undefined, 'predelivery', ctx, ctx.message.id, log) as PredeliveryVerdict | undefined;
  if (!verdict) return DEFAULT;
  if (verdict.verdict !== 'deliver') {
    const refusal = verdictReply('predelivery', verdict)!;
    const permanent = refusal.responseCode >= 500;
    return { action: permanent ? 'reject' : 'defer', reason: refusal.reason, failure: new DeliveryFailure(`${refusal.responseCode} ${refusal.message}`, { permanent, enhanced: refusal.enhanced }) };
  }
  const undeclared = undeclaredName(generation.config.delivery, verdict);
  if (undeclared) {
    const file = generation.sandboxFor(undefined).scriptFile('predelivery');
    log.error({ id: ctx.message.id, script: file, domain: ctx.destination.domain }, `${ctx.message.id}: predelivery script ${file}: ${undeclared}: delivery deferred`);
    return { action: 'defer', reason: `script predelivery: ${undeclared}`, failure: new DeliveryFailure(undeclared, { permanent: false, enhanced: '4.7.0' }) };
  }
  const tls: DecidedTls = {};
  if (verdict.tls?.mode) tls.mode = verdict.tls.mode;
  if (verdict.tls?.clientCertificate !== undefined) tls.clientCertificate = verdict.tls.clientCertificate;
  if (verdict.tls?.serverName !== undefined) tls.serverName = verdict.tls.serverName;
  if (verdict.tls?.ca !== undefined) tls.ca = verdict.tls.ca;
  return {
    action: 'deliver', tls,
    ...(verdict.host !== undefined ? { host: withoutBrackets(verdict.host) } : {}),
    ...(verdict.port !== undefined ? { port: verdict.port } : {}),
    ...(verdict.implicitTls !== undefined ? { implicitTls: verdict.implicitTls } : {}),
    // The keys as a list ([]: unsigned); a copy, the verdict's own array is the script's.
    ...(verdict.dkim !== undefined ? { dkim: verdict.dkim === null ? [] : typeof verdict.dkim === 'string' ? [verdict.dkim] : [...verdict.dkim] } : {}),
  };
}

/**
 * A client certificate or CA a deliver verdict names that the configuration does not declare, as the connection's
 * own lookup words it (outbound-tls.ts); null when every name is declared. Checked whatever the TLS mode: the
 * connection looks a name up only where its mode uses it (no certificate without TLS, no CA but for `verify`), so
 * `tls: { ca: "partner-ca" }` misspelt under the default `may`, or a certificate named with `mode: "none"`, was
 * delivered without a word, where the docs promise a temporary failure that shows the typo.
 */
function undeclaredName(delivery: DeliveryConfig, verdict: Extract<PredeliveryVerdict, { verdict: 'deliver' }>): string | null {
  const cert = verdict.tls?.clientCertificate;
  if (typeof cert === 'string' && declared(delivery.clientCertificates, cert) === undefined) return `no client certificate named "${cert}" under delivery.clientCertificates`;
  const ca = verdict.tls?.ca;
  if (ca !== undefined && declared(delivery.caFiles, ca) === undefined) return `no CA named "${ca}" under delivery.caFiles`;
  return null;
}

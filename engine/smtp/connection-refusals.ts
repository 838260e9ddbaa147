/**
 * postern_smtp_connections_refused_total: each connection refused at connect, once, under the limit or rule
 * that refused it. One answered with a reply is counted as its decision line is written (its reason names the
 * rule; this table gives the label); one closed unanswered before any SMTP (before TLS, a PROXY header
 * refused) where it is closed. A script's verdict at connect is not here (postern_script_verdicts_total), nor
 * an idle client's timeout.
 */
import { metrics } from '../metrics/metrics.ts';
import { REPLIES, reply } from './replies.ts';
import { GREETING_HELD_BY } from './smtp-server-replies.ts';

/** The reason label's values (docs/operations.md's row lists each: test/metrics/metrics.test.ts). */
export const CONNECTION_REFUSALS = ['max-connections', 'per-ip-limit', 'connection-rate', 'store-unavailable', 'auth-failures',
  'greeting-pause', 'untrusted-proxy', 'proxy-header', 'server-busy', 'client-certificate', 'listener-removed'] as const;
export type ConnectionRefusal = typeof CONNECTION_REFUSALS[number];

const BY_REASON: ReadonlyMap<string, ConnectionRefusal> = new Map([
  [REPLIES.tooManyClients.reason, 'max-connections'],
  [REPLIES.tooManyConnectionsFromAddress.reason, 'per-ip-limit'],
  [REPLIES.connectionRateFromAddress.reason, 'connection-rate'],
  [REPLIES.connectionRateStoreUnavailable.reason, 'store-unavailable'],
  [REPLIES.connectionLimitStoreUnavailable.reason, 'store-unavailable'],
  [REPLIES.tooManyAuthFailures.reason, 'auth-failures'],
  ...Object.values(GREETING_HELD_BY).map((heldBy) => [reply('talkedTooSoon', { hostname: '', heldBy }).reason!, 'greeting-pause'] as const),
  // On an implicit-TLS listener the handshake comes before the greeting: a certificate refused there is refused at connect.
  [REPLIES.certificateRequiredMissing.reason, 'client-certificate'],
  [REPLIES.certificateRequiredNotTrusted.reason, 'client-certificate'],
  [REPLIES.certificateNotTrustedStrict.reason, 'client-certificate'],
  [REPLIES.listenerRemoved.reason, 'listener-removed'],
]);

/** A refusal sent at stage CONNECT, with the reason of its decision line. */
export function connectRefusalCounted(listener: string, reason: string | undefined): void {
  const label = reason === undefined ? undefined : BY_REASON.get(reason);
  if (label !== undefined) metrics.connectionsRefused.inc({ listener, reason: label });
}

/** A connection closed unanswered, before any SMTP. */
export function closedUnansweredCounted(listener: string, why: ConnectionRefusal): void {
  metrics.connectionsRefused.inc({ listener, reason: why });
}

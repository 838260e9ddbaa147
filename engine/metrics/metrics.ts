/**
 * Prometheus metrics of the process, defined once here (names, help texts, labels) and updated where the
 * event happens. A leaf module: it imports nothing of Postern's, so any folder may count into it.
 * One registry per process (tests that start several servers in one process read differences); under
 * `postern serve` the supervisor's admin listener sums its children's (gauges: the largest).
 * docs/operations.md lists every metric; a test checks that list against this registry.
 */
import { HotCounter, HotHistogram } from './hot-metrics.ts';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from './prom-client-parts.ts';

export const registry = new Registry();
// postern_process_* and postern_nodejs_*. The event-loop delay is sampled every 100 ms, not prom-client's 10: its timer
// woke every process of the server 100 times a second, ~1% of a core each while idle (a blocked loop still shows as
// a late sample; a stall under 100 ms between two samples is what this loses).
collectDefaultMetrics({ register: registry, prefix: 'postern_', eventLoopMonitoringPrecision: 100 });
// Gauges named like counters (`_total`): promtool check metrics refuses the scrape for them. Each is the sum of
// the series of its namesake without the suffix (by type), which stays.
for (const name of ['active_handles_total', 'active_requests_total', 'active_resources_total']) registry.removeSingleMetric(`postern_nodejs_${name}`);

/** What the queue gauges read at each scrape: set by the server that owns the spool. */
type QueueLook = Promise<{ messages: number; held: number; oldestAgeSeconds: number }>;
let queueProbe: (() => QueueLook) | null = null;
export function setQueueProbe(probe: typeof queueProbe): void { queueProbe = probe; }
/** One look at the queue for the gauges of one scrape (they are collected together). */
let queueLook: QueueLook | null = null;
function lookAtQueue(): QueueLook {
  queueLook ??= queueProbe!().finally(() => { queueLook = null; });
  return queueLook;
}

/** The number of fenced scripts, read at each scrape: set by the supervisor of `postern serve`. */
let fenceProbe: (() => number) | null = null;
export function setFenceProbe(probe: typeof fenceProbe): void { fenceProbe = probe; }
/** How long (ms) this process's spool has had a sync past its deadline, or null: set by the server that writes it. */
let spoolSyncProbe: (() => number | null) | null = null;
export function setSpoolSyncProbe(probe: typeof spoolSyncProbe): void { spoolSyncProbe = probe; }
let authFailureProbe: (() => number) | null = null;
/** Where this process keeps its auth-failure counts (the supervisor's, a worker's, a single server's; none with Redis). */
export function setAuthFailureProbe(probe: typeof authFailureProbe): void { authFailureProbe = probe; }

const SCRIPT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const SPOOL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export const metrics = {
  connections: new Counter({
    name: 'postern_smtp_connections_total', help: 'SMTP connections accepted, by listener (those refused in place of the greeting included)',
    labelNames: ['listener'] as const, registers: [registry],
  }),
  connectionsRefused: new Counter({
    name: 'postern_smtp_connections_refused_total', help: 'Connections refused at connect, answered or closed unanswered before any SMTP (limits, greeting pause, auth-failure block, PROXY header), by listener and reason',
    labelNames: ['listener', 'reason'] as const, registers: [registry],
  }),
  tlsHandshakes: new Counter({
    name: 'postern_tls_handshakes_total',
    help: 'Completed inbound TLS handshakes by listener, protocol and client-certificate outcome (none, verified, pinned, untrusted, revoked, expired, …)',
    labelNames: ['listener', 'protocol', 'client_certificate'] as const, registers: [registry],
  }),
  tlsHandshakeFailures: new Counter({
    name: 'postern_tls_handshake_failures_total', help: 'Inbound TLS handshakes that failed (refused by TLS, or not completed in time), by listener',
    labelNames: ['listener'] as const, registers: [registry],
  }),
  authAttempts: new Counter({
    name: 'postern_auth_attempts_total', help: 'AUTH attempts by listener, mechanism and result (success, failure)',
    labelNames: ['listener', 'mechanism', 'result'] as const, registers: [registry],
  }),
  // listener: a name from the configuration (an SMTP listener's or a policy service's; '' for predelivery): bounded.
  verdicts: new HotCounter('postern_script_verdicts_total', 'Script verdicts by listener (SMTP listener or policy service; empty for predelivery), hook, verdict (accept, reject, defer, none, failed), configuration generation and source (smtp, postfix-policy)', ['listener', 'hook', 'verdict', 'generation', 'source']),
  scriptDuration: new HotHistogram('postern_script_call_duration_seconds', 'Wall time of a policy script call (waiting for an isolate included), by hook', 'hook', SCRIPT_BUCKETS),
  scriptFailures: new HotCounter('postern_script_failures_total', 'Script calls that failed closed, by hook, kind (timeout, memory, error, fenced, verdict, …) and source (smtp, postfix-policy)', ['hook', 'kind', 'source']),
  policyRequests: new Counter({
    name: 'postern_policy_requests_total', help: 'Postfix policy-service requests by service, Postfix protocol state and action (dunno, ok, prepend, reject, defer, failure, malformed)',
    labelNames: ['service', 'state', 'action'] as const, registers: [registry],
  }),
  policyConnections: new Counter({
    name: 'postern_policy_connections_total', help: 'Connections accepted by Postfix policy services, by service',
    labelNames: ['service'] as const, registers: [registry],
  }),
  // Hot: a server under a spam run refuses most of its commands.
  // reason: the decision line's (a setting, a rule, `script <hook>: <verdict>`): a few dozen values, never a client's text.
  refusals: new HotCounter('postern_smtp_refusals_total', 'Commands refused or deferred (4xx/5xx), by listener, stage, reply class and reason (the rule, limit or script verdict of the decision line)', ['listener', 'stage', 'class', 'reason']),
  messagesAccepted: new HotCounter('postern_messages_accepted_total', 'Messages acknowledged with 250 after DATA (committed to the spool), by listener', ['listener']),
  messageBytes: new HotCounter('postern_message_bytes_total', 'Bytes of messages accepted'),
  spoolCommit: new HotHistogram('postern_spool_commit_duration_seconds', 'Time from the end of DATA until the message was durably in the spool', null, SPOOL_BUCKETS),
  queueMessages: new Gauge({
    name: 'postern_queue_messages', help: 'Messages in the delivery queue (spooled, not yet delivered or bounced), held ones included', registers: [registry],
    aggregator: 'max', // across processes: only the one that reads the queue (the supervisor of `postern serve`) knows it
    async collect() { if (queueProbe) this.set((await lookAtQueue()).messages); },
  }),
  queueHeld: new Gauge({
    name: 'postern_queue_held_messages', help: 'Messages on hold (postern queue hold): in the queue, not delivered until released', registers: [registry],
    aggregator: 'max',
    async collect() { if (queueProbe) this.set((await lookAtQueue()).held); },
  }),
  queueOldestAge: new Gauge({
    name: 'postern_queue_oldest_message_age_seconds', help: 'Age of the oldest message in the delivery queue that is not on hold (0 when there is none)', registers: [registry],
    aggregator: 'max',
    async collect() { if (queueProbe) this.set((await lookAtQueue()).oldestAgeSeconds); },
  }),
  deliveries: new Counter({
    name: 'postern_deliveries_total', help: 'Recipient delivery outcomes by result (sent, deferred, bounced) and next hop',
    labelNames: ['result', 'next_hop'] as const, registers: [registry],
  }),
  bounces: new Counter({
    name: 'postern_bounces_total', help: 'Bounce messages (DSNs) generated', registers: [registry],
  }),
  reloads: new Counter({
    name: 'postern_reloads_total', help: 'Configuration reloads that found a change, by result (ok, failed)',
    labelNames: ['result'] as const, registers: [registry],
    // Every process of `postern serve` reloads each change itself: summed, one edit would count once per process.
    aggregator: 'max',
  }),
  generation: new Gauge({
    name: 'postern_config_generation', help: 'Serial number of the configuration generation in force', registers: [registry],
    aggregator: 'max',
  }),
  clientCertificateExpiry: new Gauge({
    name: 'postern_client_certificate_expiry_seconds',
    help: 'Seconds until each client certificate seen in the last 30 days expires (negative: expired), by identity and device',
    labelNames: ['identity', 'device'] as const, registers: [registry],
    aggregator: 'min', // across processes: only the one that watches expiry sets it
  }),
  crlNextUpdate: new Gauge({
    name: 'postern_crl_next_update_seconds',
    help: 'Seconds until each CRL of the listeners\' crlFiles must be replaced (its nextUpdate; negative: past it, every certificate of its CA fails), by file and issuer',
    labelNames: ['file', 'issuer'] as const, registers: [registry],
    aggregator: 'min', // across processes: only the one that watches expiry sets it
  }),
  tlsCertificateNotAfter: new Gauge({
    name: 'postern_tls_certificate_not_after_timestamp_seconds',
    help: 'When the server certificate each TLS listener serves expires (Unix time; the one in force, not the file on disk), by listener',
    labelNames: ['listener'] as const, registers: [registry],
    aggregator: 'min', // across workers: one still on an older generation serves the older certificate
  }),
  readinessCheck: new Gauge({
    name: 'postern_readiness_check_passed',
    help: 'Each check of /readyz at this scrape, by check (listeners, spool, store, reload; under postern serve processes, lock): 1 passed, 0 failed (the load balancer takes the server out of its pool)',
    labelNames: ['check'] as const, registers: [registry],
    aggregator: 'min', // only the process that answers /readyz sets it
  }),
  lastReloadFailed: new Gauge({
    name: 'postern_config_last_reload_failed', help: '1 when the last reload was refused (the previous generation is still in force), else 0',
    registers: [registry], aggregator: 'max',
  }),
  processRestarts: new Counter({
    name: 'postern_worker_restarts_total', help: 'Child processes of `postern serve` that died or hung and were replaced, by role (worker, queue)',
    labelNames: ['role'] as const, registers: [registry],
  }),
  fencedScripts: new Gauge({
    name: 'postern_fenced_scripts', help: 'Scripts fenced for crashing or hanging their worker (their hook answers 451 4.3.0 until the file changes)',
    registers: [registry], aggregator: 'max', // only the supervisor knows
    collect() { if (fenceProbe) this.set(fenceProbe()); },
  }),
  authFailureAddresses: new Gauge({
    name: 'postern_auth_failure_addresses',
    help: 'Client addresses (IPv6: networks) with failed authentications kept in memory for limits.authFailuresPerIp: those that failed within authFailureWindowMs, and expired ones until the next failure drops them; the most any process keeps',
    registers: [registry], aggregator: 'max', // each process keeps its own copy of the server's counts
    collect() { if (authFailureProbe) this.set(authFailureProbe()); },
  }),
  spoolWritesUnconfirmed: new Gauge({
    name: 'postern_spool_writes_unconfirmed',
    help: '1 while a sync of the spool is past spool.syncDeadlineMs and has not returned (a disk or storage path that stopped answering: new mail is refused with 451 4.3.0), else 0',
    registers: [registry], aggregator: 'max', // any worker whose spool hangs
    collect() { if (spoolSyncProbe) this.set(spoolSyncProbe() === null ? 0 : 1); },
  }),
  storeUnreachable: new Gauge({
    name: 'postern_store_unreachable', help: '1 while the Redis store cannot be reached or refuses commands (what needs it fails closed), else 0',
    registers: [registry], aggregator: 'max', // any process that cannot reach it
  }),
  shadowCalls: new Counter({
    name: 'postern_shadow_calls_total',
    help: 'Shadow script calls (listeners\' shadowScripts) by listener, hook and result: same or different verdict from the live script, error (failed, timed out), skipped (its isolates busy)',
    labelNames: ['listener', 'hook', 'result'] as const, registers: [registry],
  }),
  shadowInFlight: new Gauge({
    name: 'postern_shadow_calls_in_flight', help: 'Shadow script calls started and not yet settled', registers: [registry],
  }),
};

for (const m of [metrics.verdicts, metrics.scriptDuration, metrics.scriptFailures, metrics.refusals, metrics.messagesAccepted, metrics.messageBytes, metrics.spoolCommit]) registry.registerMetric(m as unknown as Parameters<Registry['registerMetric']>[0]);

/** Seconds since `startMs` (a performance.now() reading: a number, where an hrtime bigint is an allocation). */
export function secondsSince(startMs: number): number {
  return (performance.now() - startMs) / 1000;
}

/**
 * One script call's metrics: its time, its verdict (`failed` with the failure's kind when it failed closed).
 * `listener`: the SMTP listener's or policy service's name, '' for predelivery (no listener runs it).
 */
export function scriptCalled(listener: string, hook: string, generation: number, seconds: number, verdict: string, failureKind?: string, source = 'smtp'): void {
  metrics.scriptDuration.observe(seconds, hook);
  metrics.verdicts.inc(listener, hook, verdict, generation, source);
  if (failureKind !== undefined) metrics.scriptFailures.inc(hook, failureKind, source);
}

/**
 * A generation no longer running (its last session let go): its verdict series go. Each reload that changes
 * something makes a new generation, and a site regenerating its tables every few minutes would otherwise
 * grow /metrics (and Prometheus's series) without bound.
 */
export function generationRetired(generation: number): void {
  metrics.verdicts.removeWhere('generation', generation);
}

/** A command refused (5xx) or deferred (4xx) on `listener` at `stage` (the command's verb, CONNECT, END-OF-MESSAGE …), and why. */
export function refusalCounted(listener: string, stage: string, responseCode: number, reason: string | undefined): void {
  metrics.refusals.inc(listener, stage, responseCode >= 500 ? '5xx' : '4xx', reason ?? 'unknown');
}

/**
 * Distinct next_hop values one process reports. Each is a series kept for the process's life, and where mail
 * goes is not the operator's to bound: MX routing sends to whatever host each recipient domain (or a
 * bounce's sender domain) names, and whoever controls that DNS names as many as it likes. Past this many,
 * deliveries count under `other` (the log line of each still names its relay).
 */
export const MAX_NEXT_HOPS = 100;
const nextHops = new Set<string>();

/** A recipient's delivery outcome: `remoteMta` is `host[address]:port` (the address left out: one label per next hop, not per address). */
export function deliveryCounted(result: string, remoteMta: string | null): void {
  const hop = remoteMta === null ? 'none' : remoteMta.replace(/\[[^\]]*\](?=:\d+$)/, '');
  if (!nextHops.has(hop) && nextHops.size < MAX_NEXT_HOPS) nextHops.add(hop);
  metrics.deliveries.inc({ result, next_hop: nextHops.has(hop) ? hop : 'other' });
}

/** A message acknowledged after DATA. */
export function messageAccepted(listener: string, bytes: number, commitSeconds: number): void {
  metrics.spoolCommit.observe(commitSeconds);
  metrics.messagesAccepted.inc(listener);
  metrics.messageBytes.add(bytes);
}

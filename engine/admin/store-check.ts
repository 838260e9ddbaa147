/**
 * /readyz's store check: with `store.redis` unreachable (or refusing commands), the limits counted there fail
 * closed. A listener whose every client meets one of them cannot take mail: `limits.connectionRatePerIp` and
 * `limits.connectionsPerIpInStore` refuse every connection (421 4.7.0), and on a listener with `auth.required`
 * every session must authenticate, which `limits.authFailuresPerIp` (AUTH: 454 4.7.0) or
 * `limits.messagesPerIdentity` (MAIL FROM: 451 4.3.0) then refuses. Such a listener makes the server not
 * ready. One whose clients mostly pass (a script's `rate()`, AUTH offered but not required) keeps it ready:
 * with one Redis for every node, failing then would take every node out of the pool for mail that flows.
 */
import type { ReadinessCheck } from './admin-server.ts';

interface ListenerLimits {
  name: string;
  limits: { connectionRatePerIp?: unknown; connectionsPerIpInStore: boolean; messagesPerIdentity?: unknown };
  auth: { required: boolean; mechanisms: readonly string[] };
}

/** What of `l` fails closed for every client while the store is unreachable; empty when its clients can pass. */
export function storeDependence(l: ListenerLimits): string[] {
  const out: string[] = [];
  if (l.limits.connectionRatePerIp) out.push('limits.connectionRatePerIp (every connection: 421 4.7.0)');
  if (l.limits.connectionsPerIpInStore) out.push('limits.connectionsPerIpInStore (every connection: 421 4.7.0)');
  if (l.auth.required && l.auth.mechanisms.length) out.push('limits.authFailuresPerIp with auth.required (every AUTH: 454 4.7.0)');
  if (l.auth.required && l.limits.messagesPerIdentity) out.push('limits.messagesPerIdentity with auth.required (every MAIL FROM: 451 4.3.0)');
  return out;
}

/** `unreachable`: a process of the server finds its Redis store unreachable now (a memory store never is). */
export function storeCheck(listeners: readonly ListenerLimits[], unreachable: boolean): ReadinessCheck {
  if (!unreachable) return { ok: true };
  const failing = listeners.map((l) => ({ name: l.name, why: storeDependence(l) })).filter((l) => l.why.length);
  if (!failing.length) return { ok: true, detail: 'the Redis store is unreachable: what needs it (scripts\' rate() and counter(), AUTH) fails closed' };
  return { ok: false, detail: `the Redis store is unreachable: ${failing.map((l) => `listener ${l.name} refuses every client by ${l.why.join(', ')}`).join('; ')}` };
}

/** The store check of a server of several workers, from what each said (null: its store is reachable): the first failing one, else the first with a detail. */
export function storeReadiness(workers: ReadonlyArray<ReadinessCheck | null>): ReadinessCheck {
  return workers.find((c) => c && !c.ok) ?? workers.find((c) => c !== null) ?? { ok: true };
}

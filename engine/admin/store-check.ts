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

/** What fails closed for every client of each listener while the store is unreachable, of those where something does. */
export function storeDependences(listeners: readonly ListenerLimits[]): Record<string, string[]> {
  return Object.fromEntries(listeners.map((l) => [l.name, storeDependence(l)] as const).filter(([, why]) => why.length));
}

/** `unreachable`: this process finds its Redis store unreachable now (a memory store never is). */
export function storeCheck(listeners: readonly ListenerLimits[], unreachable: boolean): ReadinessCheck {
  return storeCheckOf(unreachable ? storeDependences(listeners) : null);
}

/**
 * The check from what a process said: null, its store is reachable; else storeDependences() of its listeners.
 * `only`: that listener's part.
 */
export function storeCheckOf(dependences: Record<string, readonly string[]> | null, only?: string): ReadinessCheck {
  if (!dependences) return { ok: true };
  const failing = Object.entries(dependences).filter(([name]) => only === undefined || name === only);
  if (!failing.length) return { ok: true, detail: 'the Redis store is unreachable: what needs it (scripts\' rate() and counter(), AUTH) fails closed' };
  return { ok: false, detail: `the Redis store is unreachable: ${failing.map(([name, why]) => `listener ${name} refuses every client by ${why.join(', ')}`).join('; ')}` };
}

/** Only `listener`'s part of the configuration (`/readyz?listener=`); null when there is no such listener. */
export function onlyListener<T extends { name: string }>(listeners: readonly T[], listener: string | undefined): readonly T[] | null {
  if (listener === undefined) return listeners;
  const one = listeners.filter((l) => l.name === listener);
  return one.length ? one : null;
}

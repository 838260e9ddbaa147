/** Retry timing: the wait after a failed attempt (the schedule's last step repeats) and the maximum age. */
import type { DeliveryConfig } from '../config/schema.ts';

/** Milliseconds to wait after failed attempt number `attempt` (1-based). */
export function retryDelayMs(delivery: Pick<DeliveryConfig, 'retrySchedule'>, attempt: number): number {
  const s = delivery.retrySchedule;
  return Math.round(s[Math.min(Math.max(attempt, 1), s.length) - 1]! * 1000);
}

/**
 * Whether a message received at `receivedAt` has outlived delivery.maxAgeHours at `now`; `elapsed` measures
 * its age (the queue runner's leaves out the wall clock's steps forward, see clock-steps.ts). A message received
 * "after now" was accepted while the clock ran ahead, and the clock was set back since (years, for a machine that
 * booted in 2038): by the wall clock it would not age until the clock caught up, retried all that time and never
 * bounced. Its age is then what its failed attempts (`attempts`, this one included) waited at least.
 */
export function isExpired(
  delivery: Pick<DeliveryConfig, 'maxAgeHours'> & Partial<Pick<DeliveryConfig, 'retrySchedule'>>, receivedAt: string, now: number,
  elapsed: (since: number, now: number) => number = (since, at) => at - since, attempts = 0,
): boolean {
  const t = Date.parse(receivedAt);
  if (!Number.isFinite(t)) return false;
  const maxAgeMs = delivery.maxAgeHours * 3600_000;
  if (t <= now) return elapsed(t, now) >= maxAgeMs;
  return delivery.retrySchedule !== undefined && waitedAtLeast({ retrySchedule: delivery.retrySchedule }, attempts, maxAgeMs) >= maxAgeMs;
}

/** The waits between `attempts` attempts by the schedule (counted up to `enough`). */
function waitedAtLeast(delivery: Pick<DeliveryConfig, 'retrySchedule'>, attempts: number, enough: number): number {
  let waited = 0;
  for (let k = 1; k < attempts && waited < enough; k++) waited += retryDelayMs(delivery, k);
  return waited;
}

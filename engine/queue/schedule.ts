/** Retry timing: the wait after a failed attempt (the schedule's last step repeats) and the maximum age. */
import type { DeliveryConfig } from '../config/schema.ts';

/** Milliseconds to wait after failed attempt number `attempt` (1-based). */
export function retryDelayMs(delivery: Pick<DeliveryConfig, 'retrySchedule'>, attempt: number): number {
  const s = delivery.retrySchedule;
  return Math.round(s[Math.min(Math.max(attempt, 1), s.length) - 1]! * 1000);
}

/**
 * Whether a message received at `receivedAt` has outlived delivery.maxAgeHours at `now`; `elapsed` measures
 * its age (the queue runner's leaves out the wall clock's steps forward, see clock-steps.ts).
 */
export function isExpired(
  delivery: Pick<DeliveryConfig, 'maxAgeHours'>, receivedAt: string, now: number,
  elapsed: (since: number, now: number) => number = (since, at) => at - since,
): boolean {
  const t = Date.parse(receivedAt);
  return Number.isFinite(t) && elapsed(t, now) >= delivery.maxAgeHours * 3600_000;
}

/**
 * Node's timers wait at most 2^31-1 ms (about 24.8 days) and run a longer delay after 1 ms (with a
 * TimeoutOverflowWarning). The schema bounds each configured time by it; a delay derived from one (a sum, a
 * product) goes through timerDelay(), or a deadline meant to be far away expires at once.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` as a timer can wait it: at most MAX_TIMER_MS (24.8 days stand for "not in this process's life"), at least 0; NaN is 0. */
export const timerDelay = (ms: number): number => (ms > 0 ? Math.min(ms, MAX_TIMER_MS) : 0);

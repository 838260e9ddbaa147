/**
 * A time limit (a lookup's, a build's), judged after the sockets are read. An event loop that gets the CPU back late (a loaded
 * machine descheduled the process, or one turn of other work held it) runs its timers before it polls its sockets:
 * a limit checked in the timer itself failed as `timeout` an answer that had come in time and was waiting there.
 * The timer only schedules the look for the check phase, after the poll phase has read what arrived (the store's
 * deadline-queue.ts and the sandbox's settledWithin do the same). Used by DNS lookups, the reload build's deadline,
 * the PROXY header, TLS handshakes (handshake-deadline.ts), SMTP lines, delivery's replies and `postern status`.
 */
import { timerDelay } from './timer-limit.ts';

/**
 * Calls `expire` once `ms` have passed and the sockets have been read since; the function returned cancels it.
 * `unref`: the deadline alone does not keep the process running (as a timer's unref()).
 */
export function deadlineAfterReads(ms: number, expire: () => void, opts: { unref?: boolean } = {}): () => void {
  let look: NodeJS.Immediate | undefined;
  const timer = setTimeout(() => { look = setImmediate(expire); }, timerDelay(ms));
  if (opts.unref) timer.unref();
  return () => {
    clearTimeout(timer);
    clearImmediate(look);
  };
}

/**
 * Whether a child the supervisor killed for its silence is to blame on the call its event loop was running (the
 * running-call mirror names it). Not when it was held still (SIGSTOP, a debugger), nor when its main thread did not
 * run for the limit: killed at BUSY_WITHOUT_TIMERS_MS while it waited for a CPU or worked through I/O, which is no
 * script's doing (a healthy script blamed three times is fenced, its hook answering 451 from load alone).
 * "Ran for the limit": the silence as counted (silence-clock.ts: its own time, or its process's while it waited for a
 * CPU) reached the supervisor's limit, or the main thread's own time alone reached the watchdog's. On a loaded host
 * (load 25 on 2 cores) a thread stuck in a builtin gets a share of a CPU, and its watchdog thread, late at every tick,
 * never kills it: the supervisor's kill came at the wall-clock bound after some 2 s of running and was blamed on
 * nothing (seen in a fresh-clone run), so a script hanging its worker again and again under load was never fenced. A
 * call on the fast path is stopped at its budget (milliseconds): one still running after its thread ran a whole
 * second without a beat is stuck, whatever the load.
 */
import { HANG_MS, SUPERVISOR_HANG_MS } from './process-model.ts';

export interface Silenced {
  /** Stopped by a signal or a debugger at the kill (thread-progress.ts heldStill). */
  heldStill: boolean;
  /** The silence as counted by the supervisor's SilenceClock. */
  ranMs: number;
  /** The main thread's own time on a CPU during the silence (SilenceClock.mainRanMs); null when not known. */
  mainRanMs: number | null;
}

export function silenceBlamesEventLoop(s: Silenced): boolean {
  if (s.heldStill) return false;
  return s.ranMs >= SUPERVISOR_HANG_MS || (s.mainRanMs ?? 0) >= HANG_MS;
}

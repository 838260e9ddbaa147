/**
 * An idle timeout (a socket's setTimeout, restarted by each byte) that fired is looked at after the sockets are read:
 * an event loop that gets the CPU back late runs its timers before it polls its sockets, and a peer whose bytes had
 * come in time, waiting there, was cut as idle. Bytes read in that poll phase mean it was not idle after all.
 */

/** Calls `idle` in the check phase if `count()` (bytes or chunks read from the peer) has not moved since now, else `active`. */
export function idleAfterReads(count: () => number, idle: () => void, active: () => void): void {
  const seen = count();
  setImmediate(() => (count() === seen ? idle() : active()));
}

/**
 * Waiting for the server to have done something, instead of sleeping for a time that is usually enough:
 * a condition is polled until it holds, with a deadline generous enough for a loaded 2-core CI machine.
 * Only a condition that never comes true costs the whole deadline, and the error says what was awaited.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface WaitOptions {
  /** Give up after this long (default 15 s). */
  timeoutMs?: number;
  /** Look again after this long (default 20 ms). */
  intervalMs?: number;
}

/** Resolves once `condition` returns true; rejects naming `what` when the deadline passes first. */
export async function until(what: string, condition: () => boolean | Promise<boolean>, opts: WaitOptions = {}): Promise<void> {
  const { timeoutMs = 15_000, intervalMs = 20 } = opts;
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`gave up after ${timeoutMs} ms waiting for: ${what}`);
    await sleep(intervalMs);
  }
}

/**
 * Resolves when `socket` closes, however it closes. A server that closes on bytes it has not read (a
 * client still dripping a request) sends RST, and the client sees ECONNRESET before the close:
 * `events.once(socket, 'close')` would reject on that 'error', which is a close too.
 */
export function closed(socket: { once(event: 'close', listener: () => void): unknown }): Promise<void> {
  return new Promise((resolve) => { socket.once('close', () => resolve()); });
}

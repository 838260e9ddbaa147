/**
 * Whether a process went silent for a while: no byte written (its heartbeats to the supervisor among its writes, every
 * 100 ms) for `silentMs`, as a loaded machine that descheduled it makes of it. The supervisor then rightly takes it for
 * stale (STALE_FOR_CONNECTIONS_MS) and gives its connections to another worker: a test of what happens at light load
 * can tell that from a fault, and try again. Watched from this process every few milliseconds: a watch that was itself
 * held back (`blind`) cannot tell either way.
 */
import { readFileSync } from 'node:fs';

/** Bytes process `pid` has written so far. */
const written = (pid: number): number => Number(/wchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);

export interface SilenceWatch {
  /** Ends the watch: whether `pid` was silent `silentMs` at some time, and whether the watch itself fell behind. */
  stop(): { silent: boolean; blind: boolean };
}

/** Watches `pid`'s writes from now until stop(). */
export function watchSilence(pid: number, silentMs: number): SilenceWatch {
  let bytes = written(pid);
  let lastWrite = performance.now();
  let lastLook = lastWrite;
  let silent = false;
  let blind = false;
  const look = (): void => {
    const now = performance.now();
    // Held back longer than a heartbeat's interval: writes made meanwhile are seen only now, their times unknown.
    if (now - lastLook > 50) blind = true;
    lastLook = now;
    const seen = written(pid);
    if (seen !== bytes) {
      bytes = seen;
      lastWrite = now;
    } else if (now - lastWrite >= silentMs) {
      silent = true;
    }
  };
  const timer = setInterval(look, 5);
  return {
    stop() {
      clearInterval(timer);
      look();
      return { silent, blind };
    },
  };
}

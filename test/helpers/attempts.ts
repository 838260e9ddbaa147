/** Records a queue runner's delivery attempts and waits for the one a test expects. */
import type { AttemptEvent, QueueRunner } from '../../engine/queue/runner.ts';

export interface AttemptLog {
  readonly attempts: AttemptEvent[];
  /** The next attempt that matches (with `past`, also one already made). */
  next(pred: (e: AttemptEvent) => boolean, o?: { timeoutMs?: number; past?: boolean }): Promise<AttemptEvent>;
}

export function recordAttempts(queue: QueueRunner): AttemptLog {
  const attempts: AttemptEvent[] = [];
  const waiters = new Set<(e: AttemptEvent) => void>();
  queue.onAttempt((e) => {
    attempts.push(e);
    for (const w of [...waiters]) w(e);
  });
  return {
    attempts,
    next(pred, o = {}) {
      const timeoutMs = o.timeoutMs ?? 15_000;
      if (o.past) {
        const seen = attempts.find(pred);
        if (seen) return Promise.resolve(seen);
      }
      return new Promise<AttemptEvent>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no matching queue attempt within ${timeoutMs} ms; attempts: ${JSON.stringify(attempts, null, 1).slice(0, 3000)}`));
        }, timeoutMs);
        const check = (e: AttemptEvent): void => {
          if (!pred(e)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(e);
        };
        waiters.add(check);
      });
    },
  };
}

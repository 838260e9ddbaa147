/**
 * What `postern replay` does after a candidate's call ran out of time. Its calls run one at a time on isolate
 * threads, and one that timed out may still hold its isolate (overdue: descheduled, or in a step V8 cannot
 * interrupt) until the sandbox sees it stop, or gives it up and builds a new one. The next record's call waited
 * for that and, with the stuck thread busy on a core, failed at its own deadline: decisions reported as `failed`
 * that the candidate never made (13 of 20 in a run where every other record got stuck). So replay waits until
 * the pool is at rest first. And a thread isolated-vm cannot stop is parked for good, with its isolate's memory
 * (unrecoverable.ts): a candidate whose call did that is waited for until isolated-vm has said so, and replay
 * stops there (each further such call would park one more thread, often on the mail server's own host).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { OVERDUE_CAP_MS, onUnrecoverable, unrecoverableReasons, type Sandbox } from '../sandbox/index.ts';

/** How often the pool is looked at while an overdue isolate holds it (a snapshot: there is no event for it). */
const REST_POLL_MS = 20;

/**
 * Wait until no isolate of `sandbox` is busy or being rebuilt (replay has no call of its own running then: any
 * busy one is overdue). Resolves true when an isolate was given up on meanwhile (`abandonedBefore`: the count
 * before the call) and isolated-vm then reported a thread it could not stop (a signal past the first `known`).
 */
export async function afterTimeout(sandbox: Sandbox, abandonedBefore: number, known: number): Promise<boolean> {
  for (;;) {
    const { isolates } = await sandbox.stats();
    if (isolates.every((i) => i.state !== 'busy' && i.state !== 'rebuilding')) break;
    await sleep(REST_POLL_MS);
  }
  if (sandbox.abandoned === abandonedBefore) return false;
  return parkedWithin(OVERDUE_CAP_MS, known);
}

/** Whether isolated-vm reports a thread it could not stop within `ms` (it gives one 5 s past its time limit). */
function parkedWithin(ms: number, known: number): Promise<boolean> {
  const parked = (): boolean => unrecoverableReasons().length > known;
  if (parked()) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => { stop(); resolve(false); }, ms);
    // A listener hears the earlier signals at once too: only a new one counts.
    const stop = onUnrecoverable(() => {
      if (!parked()) return;
      clearTimeout(timer);
      stop();
      resolve(true);
    });
  });
}

/**
 * A counter store whose answers wait until the test releases them (no timers), as a store such as Redis answers
 * later: `until(n)` resolves once n operations wait, `answerAll()` answers every waiting one in one turn (they are
 * delivered together), `answerOldest()` the one waiting longest, `answerNewest()` the one asked last, `failAll(e)` fails them; `counts.started` counts the operations asked of it.
 */
import { MemoryCounterStore, type CounterStore } from '../../../engine/store/index.ts';

interface Held { answer(): void; fail(error: Error): void }

export function heldStore() {
  const memory = new MemoryCounterStore();
  const held: Held[] = [];
  let wanted: { n: number; resolve(): void } | null = null;
  const counts = { started: 0 };
  const hold = <T>(value: () => T): Promise<T> => new Promise<T>((resolve, reject) => {
    counts.started++;
    held.push({ answer: () => resolve(value()), fail: reject });
    if (wanted && held.length >= wanted.n) wanted.resolve();
  });
  const store: CounterStore = {
    kind: 'held',
    rate: (k, l, w) => hold(() => memory.rateNow(k, l, w)),
    get: (k) => hold(() => memory.getNow(k)),
    add: (k, n, t) => hold(() => memory.addNow(k, n, t)),
    authFailures: () => memory.authFailures(),
    close: () => Promise.resolve(),
  };
  return {
    store, counts,
    until: (n: number): Promise<void> => (held.length >= n ? Promise.resolve() : new Promise((resolve) => { wanted = { n, resolve }; })),
    answerAll(): void { for (const h of held.splice(0)) h.answer(); },
    answerOldest(): void { held.shift()?.answer(); },
    answerNewest(): void { held.pop()?.answer(); },
    failAll(error: Error): void { for (const h of held.splice(0)) h.fail(error); },
  };
}

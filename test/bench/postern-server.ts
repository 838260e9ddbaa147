/** Postern under benchmark (a) with scripts on every context or (b) without scripts, in its own process. */
import '../../engine/app/threadpool.ts';
import '../../engine/app/timer-slack.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { MemoryCounterStore, type CounterStore } from '../../engine/store/index.ts';
import * as isolateSlot from '../../engine/sandbox/isolate-slot.ts';

const { configText, baseDir, deferredStore } = JSON.parse(process.argv[2]!) as { configText: string; baseDir: string; deferredStore?: boolean };

/**
 * `deferredStore`: the memory store, but answering as a remote store does (a promise, no `immediate`), so a
 * script's `await rate()` leaves its turn and its answer is delivered into the isolate later: what that
 * re-entry costs without any I/O (the store bench compares it with Redis).
 */
function deferred(): CounterStore {
  const m = new MemoryCounterStore();
  return { kind: 'memory', rate: (k, l, w) => m.rate(k, l, w), get: (k) => m.get(k), add: (k, n, t) => m.add(k, n, t), authFailures: () => m.authFailures(), close: () => m.close() };
}

await startPostern({ configText, baseDir, logger: createLogger(process.env.BENCH_LOG_LEVEL ?? 'warn'), ...(deferredStore ? { memoryStore: deferred() } : {}) }); // BENCH_LOG_LEVEL=info: with every decision's log line
process.on('SIGINT', () => process.exit(0));
// Isolate entries so far, for the benchmarks that count them per message (absent in trees from before the counter).
process.on('message', (m) => {
  if (m === 'slot-entries') process.send?.({ slotEntries: (isolateSlot as { slotEntries?: object }).slotEntries ?? null });
});
process.send?.('ready');

/**
 * A Postern policy service under `npm run bench:policy`, run from the source tree `root` (this tree, or
 * another one to compare with: only the engine differs). With `diag`, it watches its own tail-latency
 * suspects and answers a 'diag' message with what it saw since the previous one: GC pauses (count, total,
 * longest), event-loop delay (p99, max, sampled every millisecond) and how many script calls shared an
 * entry into the isolate. Diag costs a timer per millisecond: leave it off when comparing speed (the calls per
 * entry and the fast-path overruns are told either way).
 */
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const { configText, baseDir, root, diag } = JSON.parse(process.argv[2]!) as { configText: string; baseDir: string; root: string; diag: boolean };
const from = (path: string): Promise<Record<string, unknown>> => import(pathToFileURL(join(root, path)).href) as Promise<Record<string, unknown>>;
await from('engine/app/threadpool.ts');
await from('engine/app/timer-slack.ts');
const { startPostern } = await from('engine/app/postern.ts') as { startPostern: (o: object) => Promise<RunningPostern> };
const { createLogger } = await from('engine/logging/logger.ts') as { createLogger: (level: string) => unknown };

interface RunningPostern {
  policyAddresses: ReadonlyMap<string, string>;
  runtime: { generation: { sandboxFor(s: unknown): { stats(): Promise<{ fastPath: { calls: number; batches: number; overruns: number } }> }; config: { policyServices: unknown[] } } };
}
const running = await startPostern({ configText, baseDir, logger: createLogger(process.env.BENCH_LOG_LEVEL ?? 'warn') });

/** The script calls per isolate entry, and the fast-path attempts stopped at their budget (a hook that
 * overruns three times in 30 s runs on isolate threads for a minute: engine/sandbox/fast-path-policy.ts). */
const fastPath = async (): Promise<{ calls: number; batches: number; overruns: number }> => {
  const g = running.runtime.generation;
  return (await g.sandboxFor(g.config.policyServices[0]).stats()).fastPath;
};
let before = await fastPath();
const gc = { count: 0, totalMs: 0, maxMs: 0 };
const delay = diag ? monitorEventLoopDelay({ resolution: 1 }) : null;
if (diag) {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.count++;
      gc.totalMs += e.duration;
      gc.maxMs = Math.max(gc.maxMs, e.duration);
    }
  }).observe({ entryTypes: ['gc'] });
  delay!.enable();
}
process.on('message', (m) => {
  if (m !== 'diag') return;
  void fastPath().then((now) => {
    process.send!({
      gcCount: gc.count, gcTotalMs: gc.totalMs, gcMaxMs: gc.maxMs,
      loopP99Ms: (delay?.percentile(99) ?? 0) / 1e6, loopMaxMs: (delay?.max ?? 0) / 1e6,
      perBatch: (now.calls - before.calls) / Math.max(1, now.batches - before.batches), overruns: now.overruns - before.overruns,
    });
    Object.assign(gc, { count: 0, totalMs: 0, maxMs: 0 });
    delay?.reset();
    before = now;
  });
});
process.on('SIGINT', () => process.exit(0));
// The service listens on a port the system chose (a fixed one may be another process's): the bench reads it here.
await writeFile(join(baseDir, 'port'), running.policyAddresses.values().next().value!.split(':').pop()!);
process.send?.('ready');

/**
 * Preloaded by test/bench/serve-start.ts into every process of a `postern serve` it starts (NODE_OPTIONS --import):
 * at exit, appends the process's role (POSTERN_ROLE: worker or queue; none for the supervisor) and its CPU (user +
 * system, every thread of it included) to the file SERVE_START_CPU_LOG names, one JSON line per process.
 */
import { appendFileSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';

const log = process.env.SERVE_START_CPU_LOG;
if (log && isMainThread) {
  process.on('exit', () => {
    const { user, system } = process.cpuUsage();
    appendFileSync(log, `${JSON.stringify({ role: process.env.POSTERN_ROLE || 'supervisor', cpuMs: (user + system) / 1000 })}\n`);
  });
}

/**
 * Loaded into every test process by test/run.ts (--import) when POSTERN_TEST_CPU_LOG names a file: at exit, the
 * file's CPU time is appended to it, its own and that of the processes it started and waited for (the servers it
 * ran, and through them their workers). The run is CPU-bound on CI's two cores, so this, not a file's wall time,
 * is what a file costs the run (file-times.txt orders the files; this says where the time goes).
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { relative } from 'node:path';

const log = process.env.POSTERN_TEST_CPU_LOG;
if (log) {
  process.on('exit', () => {
    try {
      // Fields 14-17 of /proc/self/stat (after the command name's closing parenthesis): utime stime cutime cstime.
      const stat = readFileSync('/proc/self/stat', 'latin1');
      const [utime, stime, cutime, cstime] = stat.slice(stat.lastIndexOf(')') + 2).split(' ').slice(11, 15).map(Number);
      const ticks = 100; // USER_HZ on Linux
      const own = (utime! + stime!) / ticks;
      const children = (cutime! + cstime!) / ticks;
      appendFileSync(log, `${(own + children).toFixed(1)} ${own.toFixed(1)} ${children.toFixed(1)} ${relative(process.cwd(), process.argv[1] ?? '?')}\n`);
    } catch { /* no /proc: nothing recorded */ }
  });
}

/**
 * For test/run.ts: a test file whose process runs far longer than any file takes is stopped, with what its processes
 * were doing, so that one hung file fails alone instead of holding the run until its overall limit (which then names
 * no file: once a run was stopped so with 617 of 618 files done, test/try/try.test.ts still running after 18 minutes
 * though its tests have a 120 s timeout each). Linux /proc only; elsewhere it does nothing.
 */
import { readFileSync, readdirSync } from 'node:fs';

/** `started`: the process's start time (clock ticks after boot), which tells a reused pid from the process before. */
interface Proc { pid: number; ppid: number; state: string; started: string; cmdline: string[] }

function processes(): Proc[] {
  const all: Proc[] = [];
  let entries: string[];
  try { entries = readdirSync('/proc'); } catch { return all; }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').filter(Boolean);
      all.push({ pid: Number(name), ppid: Number(fields[1]), state: fields[0]!, started: fields[19]!, cmdline });
    } catch { /* gone meanwhile */ }
  }
  return all;
}

function descendants(of: number, all: readonly Proc[]): Proc[] {
  const found: Proc[] = [];
  let level = [of];
  while (level.length) {
    const next = all.filter((p) => level.includes(p.ppid));
    found.push(...next);
    level = next.map((p) => p.pid);
  }
  return found;
}

const wchan = (pid: number): string => { try { return readFileSync(`/proc/${pid}/wchan`, 'latin1'); } catch { return '?'; } };

/** Watches the test files run under `runnerPid` every 10 s; a file's process older than `limitMs` is stopped. */
export function guardHungFiles(runnerPid: number, limitMs: number, report: (text: string) => void): () => void {
  // By pid and start time: pids are reused within minutes in a run of a few thousand processes (keyed by pid alone, a
  // file of 4 s was stopped as if it had run the 9 minutes since another file had that pid).
  let firstSeen = new Map<string, number>();
  const timer = setInterval(() => {
    const all = processes();
    const files = descendants(runnerPid, all).filter((p) => p.ppid === runnerPid && p.cmdline.at(-1)?.endsWith('.test.ts'));
    const now = Date.now();
    const seen = new Map<string, number>();
    for (const file of files) {
      const key = `${file.pid}:${file.started}`;
      const since = firstSeen.get(key) ?? now;
      seen.set(key, since);
      if (now - since < limitMs) continue;
      const tree = [file, ...descendants(file.pid, all)];
      report(`postern: ${file.cmdline.at(-1)} ran ${Math.round((now - since) / 1000)} s: stopped (its processes: pid state wchan command)\n` +
        tree.map((p) => `  ${p.pid} ${p.state} ${wchan(p.pid)} ${p.cmdline.join(' ').slice(0, 240)}`).join('\n'));
      for (const p of tree) { try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }
      seen.delete(key);
    }
    firstSeen = seen; // only the files running now
  }, 10_000);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * How much of a main thread's silence counts toward a hang, for the hang checks (the watchdog thread and the
 * supervisor). A hang is a main thread that RAN for the limit without beating, not one that waited for a CPU: on an
 * overloaded host (load 20 on 2 cores, a noisy neighbour, a CPU quota) a healthy worker's main thread waited on the
 * run queue for seconds and was killed as hung, with every session on it, and a new worker to start on a machine
 * already short of CPU. Linux tells the two apart per thread: /proc/PID/task/TID/schedstat counts the time it
 * ran on a CPU, /proc/PID/task/TID/stat says whether it is runnable now (R) or asleep (S, D: blocked, say on a lock
 * or a hung disk, which counts whole, as before). So each look counts the time since the last one whole, except
 * while the thread is runnable: then only the time it actually ran. A thread stuck in a builtin on an idle CPU runs
 * all the time, and is killed as soon as before. Without /proc (or those files) every moment counts: the old rule.
 * The CPU it waited for must have gone to other processes, though: a script can crowd its own main thread (calls
 * that outran the fast path keep isolate threads busy beside a call stuck in a builtin on the event loop), and a wait
 * for a CPU its own process's threads held is no load of the host. So while runnable, the time the whole process ran
 * counts (all its threads' schedstat): a worker held to one CPU with three isolate threads busy was killed only after
 * 4.4 s, not 1 s, and with more isolates than CPUs (a container's cpuset) a hang outwaited BUSY_WITHOUT_TIMERS_MS.
 */
import { readFileSync, readdirSync } from 'node:fs';

/** A thread's time on a CPU so far (ms) and whether it is runnable now; null when /proc does not say. */
function readThread(pid: number): { ranMs: number; runnable: boolean } | null {
  try {
    const sched = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'latin1');
    const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'latin1');
    const ranNs = Number(sched.split(' ')[0]);
    const state = stat.charAt(stat.lastIndexOf(')') + 2);
    // A thread that has run reads more than 0; "0 0 0" is a kernel that keeps no schedstats (before 5.14 booted with
    // nodelayacct, or without CONFIG_SCHEDSTATS): no reading, so every moment counts, rather than none.
    return Number.isFinite(ranNs) && ranNs > 0 && state ? { ranMs: ranNs / 1e6, runnable: state === 'R' } : null;
  } catch {
    return null;
  }
}

/** All threads' time on a CPU so far (ms): threads gone since take theirs with them (a look counts 0, not less). */
function readProcessRan(pid: number): number | null {
  let ns = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'latin1').split(' ')[0]) || 0;
      } catch { /* the thread ended meanwhile */ }
    }
  } catch {
    return null;
  }
  return ns / 1e6;
}

export class SilenceClock {
  readonly #pid: number;
  #counted = 0;
  #at = 0;
  #ranMs: number | null = null;
  #processRanMs: number | null = null;
  #mainRanMs: number | null = null;

  /** The main thread's id is its process id. */
  constructor(pid: number) {
    this.#pid = pid;
  }

  /**
   * The silence starts over at `now` (a beat, or progress), with `counted` of it already counted. No reading here (it
   * runs on every beat): the first look counts its time whole.
   */
  reset(now: number, counted = 0): void {
    this.#counted = counted;
    this.#at = now;
    this.#ranMs = null;
    this.#processRanMs = null;
    this.#mainRanMs = null;
  }

  /**
   * The time the main thread itself ran on a CPU during the silence, as far as the looks saw it (the time before the
   * first one is not known); null before a second look, or without /proc.
   */
  get mainRanMs(): number | null {
    return this.#mainRanMs;
  }

  /**
   * The silence counted by `now`: wall time, less the time the thread was runnable and waited for a CPU that no thread
   * of its process had either.
   */
  look(now: number): number {
    const elapsed = Math.max(0, now - this.#at);
    const thread = readThread(this.#pid);
    // Every thread's schedstat only while it is runnable: a main thread asleep in epoll (most looks) costs two reads.
    const processRanMs = thread?.runnable ? readProcessRan(this.#pid) : null;
    const ran = thread && this.#ranMs !== null ? Math.max(0, thread.ranMs - this.#ranMs) : null;
    const processRan = processRanMs !== null && this.#processRanMs !== null ? Math.max(0, processRanMs - this.#processRanMs) : null;
    this.#counted += thread?.runnable && ran !== null ? Math.min(elapsed, Math.max(ran, processRan ?? 0)) : elapsed;
    if (ran !== null) this.#mainRanMs = (this.#mainRanMs ?? 0) + ran;
    this.#at = now;
    this.#ranMs = thread?.ranMs ?? null;
    this.#processRanMs = processRanMs;
    return this.#counted;
  }
}

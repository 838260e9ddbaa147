import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/**
 * The event-loop thread's CPU time, for the fast path's budget rule (fast-path-policy.ts): what a stopped
 * attempt used of the CPU, not of the wall clock. isolated-vm's isolate.cpuTime would be wall time (its build
 * leaves USE_CLOCK_THREAD_CPUTIME_ID off): a thread the machine descheduled for 50 ms in a trivial script
 * "held the event loop" and moved its hook off the fast path for a minute (seen in bench runs on the loaded
 * 2-core machine).
 *
 * Reading the thread's CPU time is a system call and an object (process.threadCpuUsage: 1.6 µs per entry into an
 * isolate in profiles of benchmark (a)), and nearly every entry ends within its budget, so its reading is never
 * used. So a mark before an entry reuses the last reading when it is recent, and counts the whole wall time
 * since that reading as CPU already used before the mark (one thread cannot use more CPU than wall time): what
 * since() reports is then a lower bound of the entry's CPU time, short of it by at most `maxAgeMs`. The rule
 * cannot misfire from it (a descheduled attempt never looks busier than it was); a busy attempt looks at most
 * `maxAgeMs` less busy, which the rule's margin covers (see cpuReadingMaxAgeMs).
 */

/** CPU time of this thread so far (µs). */
export function threadCpuMicros(): number {
  const used = process.threadCpuUsage();
  return used.user + used.system;
}

export class ThreadCpuClock {
  readonly #readCpu: () => number;
  readonly #now: () => number;
  #cpuAt = 0;
  #wallAt = -Infinity;

  /** `readCpu` (µs) and `now` (ms): the thread's CPU time and a monotonic wall clock; replaceable in tests. */
  constructor(readCpu: () => number = threadCpuMicros, now: () => number = () => performance.now()) {
    this.#readCpu = readCpu;
    this.#now = now;
  }

  /**
   * A mark before an entry, for since(): the thread's CPU time now (µs), or more — never less. Reads the CPU time
   * only when the last reading is older than `maxAgeMs`.
   */
  mark(maxAgeMs: number): number {
    const now = this.#now();
    if (now - this.#wallAt > maxAgeMs) {
      this.#wallAt = now;
      this.#cpuAt = this.#readCpu(); // read after the wall clock: still no less than the CPU time at `now`
    }
    return this.#cpuAt + (now - this.#wallAt) * 1000;
  }

  /** CPU time (ms) this thread used since `mark`, or less (by at most the age of the reading the mark reused). */
  since(mark: number): number {
    this.#wallAt = this.#now();
    this.#cpuAt = this.#readCpu(); // after the wall clock, as in mark()
    return Math.max(0, (this.#cpuAt - mark) / 1000);
  }
}

/**
 * CPU time (µs) of this process's threads other than this one (isolate threads, V8's and libuv's helpers): at
 * least what any one isolate thread used. Where threads cannot be read one by one (no /proc: otherThreadsNow), the
 * pool tells a call stuck past its deadline from one merely descheduled by it by this sum (sandbox.ts, Overdue).
 */
export function otherThreadsCpuMicros(): number {
  const all = process.cpuUsage();
  const own = process.threadCpuUsage();
  return all.user + all.system - own.user - own.system;
}

/** A thread of this process other than the caller's, as /proc reads it: its CPU time so far (µs), and whether it is
 * running or waiting for a CPU now (state R) as opposed to blocked, stopped or traced. */
export interface ThreadReading { cpu: number; runnable: boolean }

/** USER_HZ: the unit of utime and stime in /proc/…/stat (100 on every Linux architecture Node runs on). */
const TICK_MICROS = 10_000;

/**
 * Every thread of this process but the caller's, by thread id, from /proc/self/task; null without /proc. The pool
 * judges an overdue isolate by its own thread (sandbox.ts, Overdue): the thread running it is one of those runnable at
 * the deadline, and it is stuck once each of those still runnable has had STUCK_CPU_MS of CPU since. Another thread's
 * CPU time (another isolate running a script in time, libuv's pool hashing a password) says nothing about it.
 */
export function otherThreadsNow(): Map<number, ThreadReading> | null {
  let own: string;
  let tids: string[];
  try {
    own = readlinkSync('/proc/thread-self').split('/').pop()!;
    tids = readdirSync('/proc/self/task');
  } catch {
    return null;
  }
  const threads = new Map<number, ThreadReading>();
  for (const tid of tids) {
    if (tid === own) continue;
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // from field 3 (state) on
      threads.set(Number(tid), { cpu: (Number(fields[11]) + Number(fields[12])) * TICK_MICROS, runnable: fields[0] === 'R' });
    } catch { /* ended meanwhile */ }
  }
  return threads;
}

/**
 * Whether an isolate overdue since reading `at` (otherThreadsNow()) is shown stuck by reading `now`: some thread
 * runnable then has had `stuckMicros` of CPU time since, and so has every one of them still runnable (the overdue
 * isolate's thread among them; one merely descheduled is runnable and gets nothing). A thread not runnable then (held
 * still, blocked) shows nothing either way: OVERDUE_CAP_MS decides for it.
 */
export function shownStuck(at: ReadonlyMap<number, ThreadReading>, now: ReadonlyMap<number, ThreadReading>, stuckMicros: number): boolean {
  let someGot = false;
  for (const [tid, then] of at) {
    if (!then.runnable) continue;
    const reading = now.get(tid);
    const got = reading ? reading.cpu - then.cpu >= stuckMicros : false;
    if (got) someGot = true;
    else if (reading?.runnable) return false; // runnable and short of it: perhaps the overdue isolate's, descheduled
  }
  return someGot;
}

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
 * least what any one isolate thread used. The pool tells a call stuck past its deadline from one merely
 * descheduled by it (sandbox.ts, Overdue): a thread that got CPU time and still did not stop is stuck.
 */
export function otherThreadsCpuMicros(): number {
  const all = process.cpuUsage();
  const own = process.threadCpuUsage();
  return all.user + all.system - own.user - own.system;
}

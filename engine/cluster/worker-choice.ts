/**
 * Which worker gets the next SMTP connection: the first, in a fixed order, that is not busy; the next one
 * only when it is busy and the machine has a core to spare for the next, or when it is saturated.
 *
 * Why fill one worker before the next rather than round robin: much of a worker's work is done once per
 * event-loop turn for every session that has something to do in it, not once per message (the calls of a
 * turn share one isolate entry, the spool records of a flush one fdatasync, the replies of a turn one
 * write). Spread over two workers at a load one could carry, each turn serves half as many sessions and
 * the server spends more CPU per message (measured: docs/benchmarks.md, "Where `postern serve`'s CPU
 * goes"). Why it is sound: "busy" is the worker's own event-loop utilisation over its last heartbeat
 * interval (100 ms), plus an allowance for each connection handed to it since, so a burst spills over
 * before that worker has said anything; a busy worker gets nothing new while another is below the mark
 * and the machine has idle CPU for it, and at full load every worker is used. Without idle CPU a second
 * worker can only take cores from the first (or from whatever else runs there): it adds per-turn work and
 * serves no more, so the connection stays with the first.
 */

import { readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';

/** Event-loop utilisation (0–1) under which a worker still takes connections before the next is tried. */
export const FILL_UP_TO = 0.6;
/**
 * Utilisation counted for each connection handed over since the worker's last heartbeat: a new session's
 * handshake, greeting and first commands take a millisecond or two of a 100 ms interval, and with reuse it
 * keeps about that much busy (the benchmark's 20 sessions keep one worker at about 0.5 when it has a core).
 */
export const NEW_CONNECTION_LOAD = 0.02;
/**
 * Idle CPU of the machine (in cores, over the last heartbeat interval) that makes spreading worthwhile: a
 * whole core for the next worker. With half a core it was not: on the 2-core benchmark machine (its load
 * generator on the same cores) about 0.6 of a core idle made the second worker take connections at 10–12%
 * more CPU per message and a lower rate than one worker (docs/benchmarks.md).
 */
export const SPARE_TO_SPREAD = 1;
/**
 * Utilisation at which a worker is saturated: its sessions queue for its thread. It then spills to the next
 * worker even without a spare core (the machine shared with other work: the scheduler gives each runnable
 * worker its share, so a second one still serves more, and it keeps one worker's queue from growing) —
 * if its thread was also on a CPU for at least ON_CPU_TO_SATURATE of the interval.
 */
export const SATURATED = 0.95;
/**
 * Share of the interval a saturated worker's event-loop thread must have spent on a CPU for it to spill
 * without a spare core: its own work fills its thread (a script keeping it busy, more sessions than one
 * thread serves). A loop that is busy but mostly waiting to be scheduled (the machine's cores taken by other
 * processes: event-loop utilisation counts that wait) is contended, not saturated: a second worker would only
 * compete for the same cores, at more CPU per message (measured: docs/benchmarks.md, "A whole idle core to
 * spread").
 */
export const ON_CPU_TO_SATURATE = 0.85;

export interface WorkerLoad {
  /** Event-loop utilisation over the worker's last heartbeat interval. */
  elu: number;
  /** Share of that interval its event-loop thread was on a CPU (its thread CPU time over the wall time). */
  cpu: number;
  /** Connections handed to it since that heartbeat. */
  fresh: number;
}

/**
 * The index in `candidates` (workers able to take a connection now, in fill order, at least one) of the one
 * to use; `spareCores`: the machine's idle CPU lately, in cores.
 */
export function chooseWorker(candidates: readonly WorkerLoad[], spareCores: number): number {
  let best = 0;
  let bestLoad = Infinity;
  for (const [i, c] of candidates.entries()) {
    const load = c.elu + c.fresh * NEW_CONNECTION_LOAD;
    if (load < FILL_UP_TO) return i;
    const saturated = load >= SATURATED && c.cpu >= ON_CPU_TO_SATURATE;
    if (spareCores < SPARE_TO_SPREAD && !saturated) return i; // busy, but no core to spare for the next: stays here
    if (load < bestLoad) {
      best = i;
      bestLoad = load;
    }
  }
  return best;
}

/**
 * How many of `candidates` (workers able to accept now, in fill order) accept connections on the listening
 * sockets themselves: the first, and each next one only while every one before it is busy by the rule of
 * chooseWorker (busy with a core to spare, or saturated). Decided at each heartbeat: the workers that accept
 * take what the kernel queues, so a burst between two heartbeats stays with them.
 */
export function acceptingCount(candidates: readonly WorkerLoad[], spareCores: number): number {
  for (const [i, c] of candidates.entries()) {
    const load = c.elu + c.fresh * NEW_CONNECTION_LOAD;
    if (load < FILL_UP_TO) return i + 1;
    const saturated = load >= SATURATED && c.cpu >= ON_CPU_TO_SATURATE;
    if (spareCores < SPARE_TO_SPREAD && !saturated) return i + 1;
  }
  return candidates.length;
}

/** The machine's CPU time so far (any unit): idle (with I/O wait) and in all, with its number of cores. */
export interface CpuSample { idle: number; total: number; cores: number }

/**
 * One sample: the first line of /proc/stat on Linux (one small read, whatever the number of cores),
 * else the sum over os.cpus().
 */
export function cpuSample(): CpuSample {
  const cores = availableParallelism();
  try {
    const line = readFileSync('/proc/stat', 'latin1');
    const ticks = line.slice(0, line.indexOf('\n')).trim().split(/\s+/).slice(1, 9).map(Number);
    return { idle: ticks[3]! + ticks[4]!, total: ticks.reduce((a, b) => a + b, 0), cores };
  } catch {
    let idle = 0;
    let total = 0;
    for (const { times: t } of cpus()) {
      idle += t.idle;
      total += t.user + t.nice + t.sys + t.irq + t.idle;
    }
    return { idle, total, cores };
  }
}

/** The machine's idle CPU between two samples, in cores (all of them without an earlier sample). */
export function spareCores(before: CpuSample | null, after: CpuSample): number {
  const total = after.total - (before?.total ?? after.total);
  return before && total > 0 ? (after.idle - before.idle) / total * after.cores : after.cores;
}

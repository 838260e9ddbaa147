/**
 * The metrics of `postern serve` as one server: the supervisor's own and every child's answer, merged by each
 * metric's aggregator (prom-client's; counters summed). A child's counters live in the child: replaced (killed,
 * hung, recycled), its counts went with it and the sum went down, and a child that did not answer in time was
 * left out of that scrape the same way. To Prometheus a counter that goes down was reset: rate() and increase()
 * then count the whole remaining sum again as new (a spike in every alert on refusals, deliveries, restarts).
 * So the last answer of each child is kept: it stands in for the child when it does not answer, and when the
 * child exits its counters and histograms (not its gauges: what it held is gone with it) are added to every
 * scrape from then on. A child that stops of its own accord (recycled: its sandbox cannot recover; stopped) sends its
 * counters as its last words, so what it counted after its last scrape stays counted too; what a killed child
 * (crashed, hung) counted after its last scrape is lost with it.
 */
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import { aggregatorRegistry, type Registry } from './prom-client-parts.ts';
import { MAX_NEXT_HOPS } from './metrics.ts';

export type MetricsAnswer = MetricObjectWithValues<MetricValue<string>>[];

/** What only grows (as JSON names its type): kept for a child that exited. */
const CUMULATIVE = new Set(['counter', 'histogram']);

/**
 * Labels whose values belong to one process (a generation serial: each process numbers its own, and drops a
 * generation's series once it no longer runs). An exited child's counts are kept under `exited` instead: kept
 * under its last generation, each exit after a reload would add series for the life of the supervisor.
 */
const PROCESS_LABELS: Readonly<Record<string, string>> = { postern_script_verdicts_total: 'generation' };

/**
 * Labels whose values each process bounds (metrics.ts), bounded again over the processes: a replaced queue
 * process's next hops stayed in every scrape beside its successor's, so each replacement could add as many
 * series again, for the supervisor's life. The first values shown stay shown (a series that vanished would
 * look like a counter reset); later ones are counted under `other`, as within one process.
 */
const BOUNDED_LABELS: Readonly<Record<string, { label: string; max: number; other: string }>> = {
  postern_deliveries_total: { label: 'next_hop', max: MAX_NEXT_HOPS, other: 'other' },
};

function withoutProcessLabels(m: MetricsAnswer[number]): MetricsAnswer[number] {
  const label = PROCESS_LABELS[m.name];
  if (label === undefined) return m;
  return { ...m, values: m.values.map((v) => ({ ...v, labels: { ...v.labels, [label]: 'exited' } })) };
}

export class ClusterMetrics {
  /** Each live child's last answer, by the child's process. */
  readonly #last = new Map<object, MetricsAnswer>();
  /** The counters and histograms of every exited child as last seen, merged into one. */
  #retired: MetricsAnswer = [];
  /** Per metric of BOUNDED_LABELS, the values of its label shown so far. */
  readonly #shown = new Map<string, Set<string>>();

  /** `answer` with the values of BOUNDED_LABELS past their bound counted under `other`. */
  #bounded(answer: MetricsAnswer): MetricsAnswer {
    return answer.map((m) => {
      const bound = BOUNDED_LABELS[m.name];
      if (bound === undefined) return m;
      let shown = this.#shown.get(m.name);
      if (!shown) this.#shown.set(m.name, shown = new Set());
      const kept = shown;
      return {
        ...m, values: m.values.map((v) => {
          const value = String(v.labels[bound.label]);
          if (value === bound.other || kept.has(value)) return v;
          if (kept.size < bound.max) {
            kept.add(value);
            return v;
          }
          return { ...v, labels: { ...v.labels, [bound.label]: bound.other } };
        }),
      };
    });
  }

  /** A child's answer to this scrape, or (null: it did not answer in time) the last one it gave. */
  answered(child: object, answer: MetricsAnswer | null): MetricsAnswer | null {
    if (answer === null) return this.#last.get(child) ?? null;
    this.#last.set(child, answer);
    return answer;
  }

  /** Children whose exit was seen (their last words may come after it: IPC and the exit are not ordered). */
  readonly #gone = new WeakSet<object>();

  /** The child's final answer, sent as it stops: it stands for the child from now on, and after its exit. */
  lastWords(child: object, answer: MetricsAnswer): void {
    if (this.#gone.has(child)) this.#retire(answer);
    else this.#last.set(child, answer);
  }

  /** The child's process exited: what it counted stays counted. */
  exited(child: object): void {
    const last = this.#last.get(child);
    this.#last.delete(child);
    this.#gone.add(child);
    if (last) this.#retire(last);
  }

  #retire(last: MetricsAnswer): void {
    const kept = this.#bounded(last.filter((m) => CUMULATIVE.has(String(m.type))).map(withoutProcessLabels));
    // aggregate() registers each merged metric as its plain values (and a get() that returns them): read at once.
    this.#retired = aggregatorRegistry().aggregate([this.#retired, kept]).getMetricsAsArray()
      .map((m) => { const { name, help, type, values, aggregator } = m as unknown as MetricsAnswer[number]; return { name, help, type, values, aggregator }; }) as unknown as MetricsAnswer;
  }

  /** The server's metrics: `own` (the supervisor's), the children's `answers`, and those of exited children. */
  merged(own: MetricsAnswer, answers: ReadonlyArray<MetricsAnswer | null>): Registry {
    // (The exited children's values are among those shown already: bounded as they exited.)
    const live = [own, ...answers.filter((a): a is MetricsAnswer => a !== null)].map((a) => this.#bounded(a));
    return aggregatorRegistry().aggregate([...live, this.#retired]);
  }
}

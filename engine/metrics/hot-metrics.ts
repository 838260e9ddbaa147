/**
 * Metrics updated on every script call, kept in plain arrays and maps and handed to prom-client's registry
 * as metric objects of its shape (get() → name, help, type, values): prom-client hashes the label set on
 * every update, which cost ~5 µs per message for three calls (profile); here an update is a map lookup
 * and an array increment. Scraping and cross-process aggregation see them like any other metric.
 */

interface Sample { labels: Record<string, string | number>; value: number; metricName?: string }
interface MetricJson { name: string; help: string; type: 'counter' | 'histogram'; values: Sample[]; aggregator: 'sum' }

/** A counter over a fixed list of labels. */
export class HotCounter {
  readonly name: string;
  readonly help: string;
  readonly aggregator = 'sum' as const;
  readonly #labelNames: readonly string[];
  readonly #series = new Map<string, { values: readonly string[]; value: number }>();

  constructor(name: string, help: string, labelNames: readonly string[]) {
    this.name = name;
    this.help = help;
    this.#labelNames = labelNames;
  }

  inc(...values: string[]): void {
    const key = values.join('\0');
    const s = this.#series.get(key);
    if (s) s.value++;
    else this.#series.set(key, { values, value: 1 });
  }

  get(): MetricJson {
    return {
      name: this.name, help: this.help, type: 'counter', aggregator: this.aggregator,
      values: [...this.#series.values()].map((s) => ({ labels: this.#labels(s.values), value: s.value })),
    };
  }

  reset(): void { this.#series.clear(); }

  #labels(values: readonly string[]): Record<string, string> {
    return Object.fromEntries(this.#labelNames.map((n, i) => [n, values[i]!]));
  }
}

/** A histogram with one label. */
export class HotHistogram {
  readonly name: string;
  readonly help: string;
  readonly aggregator = 'sum' as const;
  readonly #label: string;
  readonly #bounds: readonly number[];
  readonly #series = new Map<string, { counts: Float64Array; sum: number; count: number }>();

  constructor(name: string, help: string, label: string, bounds: readonly number[]) {
    this.name = name;
    this.help = help;
    this.#label = label;
    this.#bounds = bounds;
  }

  observe(labelValue: string, value: number): void {
    let s = this.#series.get(labelValue);
    if (!s) this.#series.set(labelValue, s = { counts: new Float64Array(this.#bounds.length + 1), sum: 0, count: 0 });
    let i = 0;
    while (i < this.#bounds.length && value > this.#bounds[i]!) i++;
    s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  get(): MetricJson {
    const values: Sample[] = [];
    for (const [labelValue, s] of this.#series) {
      let cumulative = 0;
      for (let i = 0; i <= this.#bounds.length; i++) {
        cumulative += s.counts[i]!;
        values.push({ labels: { le: i < this.#bounds.length ? this.#bounds[i]! : '+Inf', [this.#label]: labelValue }, value: cumulative, metricName: `${this.name}_bucket` });
      }
      values.push({ labels: { [this.#label]: labelValue }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { [this.#label]: labelValue }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: this.aggregator, values };
  }

  reset(): void { this.#series.clear(); }
}

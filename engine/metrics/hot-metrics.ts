/**
 * Metrics updated on every script call or message, kept in plain maps and arrays and handed to prom-client's
 * registry as metric objects of its shape (get() → name, help, type, values): prom-client hashes the label set
 * on every update (a labelled child too), which cost ~5 µs per message for three calls (profile); here an
 * update is a map lookup per label (no key string is built) and an increment. Scraping and cross-process
 * aggregation see them like any other metric.
 */

interface Sample { labels: Record<string, string | number>; value: number; metricName?: string }
interface MetricJson { name: string; help: string; type: 'counter' | 'histogram'; values: Sample[]; aggregator: 'sum' }

/** A label value; numbers (e.g. a generation serial) are shown as their decimal text. */
type LabelValue = string | number;

/** The series of a metric by label values, one map per label: finding one builds no key. */
class SeriesIndex<S> {
  readonly #make: () => S;
  #root = new Map<LabelValue, unknown>();
  #all: Array<{ values: readonly LabelValue[]; series: S }> = [];

  /** `make`: a new series, the first time its label values are seen. */
  constructor(make: () => S) {
    this.#make = make;
  }

  find(values: readonly LabelValue[]): S {
    let node = this.#root;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      let next = node.get(values[i]!) as Map<LabelValue, unknown> | undefined;
      if (next === undefined) node.set(values[i]!, next = new Map());
      node = next;
    }
    const key = last >= 0 ? values[last]! : '';
    return (node.get(key) as S | undefined) ?? this.#add(node, key, values);
  }

  /**
   * find() for the first `count` (≤ MAX_LABELS) of v0…v4, without an array of them: an update's rest
   * parameter was an array per call (profile: ~300 B per message for the script and message counters).
   */
  findOf(count: number, v0: LabelValue | undefined, v1: LabelValue | undefined, v2: LabelValue | undefined, v3: LabelValue | undefined, v4: LabelValue | undefined): S {
    if (count === 0) return this.find(NO_VALUES);
    let node = this.#root;
    for (let i = 0; i < count - 1; i++) {
      const v = (i === 0 ? v0 : i === 1 ? v1 : i === 2 ? v2 : v3)!;
      let next = node.get(v) as Map<LabelValue, unknown> | undefined;
      if (next === undefined) node.set(v, next = new Map());
      node = next;
    }
    const key = (count === 1 ? v0 : count === 2 ? v1 : count === 3 ? v2 : count === 4 ? v3 : v4)!;
    return (node.get(key) as S | undefined) ?? this.#add(node, key, [v0, v1, v2, v3, v4].slice(0, count) as LabelValue[]);
  }

  /** The series of a metric with one label (or none: value ''), without an array of values. */
  one(value: LabelValue): S {
    return (this.#root.get(value) as S | undefined) ?? this.#add(this.#root, value, [value]);
  }

  #add(node: Map<LabelValue, unknown>, key: LabelValue, values: readonly LabelValue[]): S {
    const series = this.#make();
    node.set(key, series);
    this.#all.push({ values: [...values], series });
    return series;
  }

  get entries(): ReadonlyArray<{ values: readonly LabelValue[]; series: S }> { return this.#all; }

  /** Drop the series whose label at `index` is `value` (rare: the index is rebuilt from what is kept). */
  removeWhere(index: number, value: LabelValue): void {
    const kept = this.#all.filter((e) => e.values[index] !== value);
    if (kept.length === this.#all.length) return;
    this.clear();
    for (const e of kept) {
      let node = this.#root;
      for (let i = 0; i < e.values.length - 1; i++) {
        let next = node.get(e.values[i]!) as Map<LabelValue, unknown> | undefined;
        if (next === undefined) node.set(e.values[i]!, next = new Map());
        node = next;
      }
      node.set(e.values.length ? e.values.at(-1)! : '', e.series);
      this.#all.push(e);
    }
  }

  clear(): void {
    this.#root = new Map();
    this.#all = [];
  }
}

const NO_VALUES: readonly LabelValue[] = [];
/** Labels a hot counter may have (see SeriesIndex.findOf). */
const MAX_LABELS = 5;

/** A counter over a fixed list of labels (none: one series). */
export class HotCounter {
  readonly name: string;
  readonly help: string;
  readonly aggregator = 'sum' as const;
  readonly #labelNames: readonly string[];
  readonly #series = new SeriesIndex(() => ({ value: 0 }));

  constructor(name: string, help: string, labelNames: readonly string[] = []) {
    this.name = name;
    this.help = help;
    if (labelNames.length > MAX_LABELS) throw new RangeError(`${name}: a hot counter has at most ${MAX_LABELS} labels`);
    this.#labelNames = labelNames;
    this.reset();
  }

  /** As prom-client's metrics have them (docs/operations.md's table is checked against them). */
  get labelNames(): readonly string[] { return this.#labelNames; }

  /** Count one for the label values given, in the order of the label names (all of them). */
  inc(v0?: LabelValue, v1?: LabelValue, v2?: LabelValue, v3?: LabelValue, v4?: LabelValue): void {
    this.#series.findOf(this.#labelNames.length, v0, v1, v2, v3, v4).value++;
  }

  /** Add `amount` (≥ 0) to the series of the label values given. */
  add(amount: number, v0?: LabelValue, v1?: LabelValue, v2?: LabelValue, v3?: LabelValue, v4?: LabelValue): void {
    this.#series.findOf(this.#labelNames.length, v0, v1, v2, v3, v4).value += amount;
  }

  /** Drop every series whose label `name` has `value` (prom-client's remove(), for one label). */
  removeWhere(name: string, value: LabelValue): void {
    const index = this.#labelNames.indexOf(name);
    if (index < 0) throw new RangeError(`${this.name} has no label ${name}`);
    this.#series.removeWhere(index, value);
  }

  get(): MetricJson {
    return {
      name: this.name, help: this.help, type: 'counter', aggregator: this.aggregator,
      values: this.#series.entries.map((s) => ({ labels: this.#labels(s.values), value: s.series.value })),
    };
  }

  /** An unlabelled counter shows 0 before its first update, as prom-client's do. */
  reset(): void {
    this.#series.clear();
    if (this.#labelNames.length === 0) this.add(0);
  }

  #labels(values: readonly LabelValue[]): Record<string, string> {
    return Object.fromEntries(this.#labelNames.map((n, i) => [n, String(values[i]!)]));
  }
}

/** A histogram with one label, or none (label null). */
export class HotHistogram {
  readonly name: string;
  readonly help: string;
  readonly aggregator = 'sum' as const;
  readonly #label: string | null;
  readonly #bounds: readonly number[];
  readonly #series: SeriesIndex<{ counts: Float64Array; sum: number; count: number }>;

  constructor(name: string, help: string, label: string | null, bounds: readonly number[]) {
    this.name = name;
    this.help = help;
    this.#label = label;
    this.#bounds = bounds;
    this.#series = new SeriesIndex(() => ({ counts: new Float64Array(bounds.length + 1), sum: 0, count: 0 }));
    this.reset();
  }

  /** As prom-client's metrics have them (docs/operations.md's table is checked against them). */
  get labelNames(): readonly string[] { return this.#label === null ? [] : [this.#label]; }

  /** Observe `value`; `labelValue` only for a histogram with a label. */
  observe(value: number, labelValue?: string): void {
    const s = this.#series.one(labelValue ?? '');
    let i = 0;
    while (i < this.#bounds.length && value > this.#bounds[i]!) i++;
    s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  get(): MetricJson {
    const values: Sample[] = [];
    for (const { values: labelValues, series: s } of this.#series.entries) {
      const labels: Record<string, string> = this.#label === null ? {} : { [this.#label]: String(labelValues[0]) };
      let cumulative = 0;
      for (let i = 0; i <= this.#bounds.length; i++) {
        cumulative += s.counts[i]!;
        values.push({ labels: { le: i < this.#bounds.length ? this.#bounds[i]! : '+Inf', ...labels }, value: cumulative, metricName: `${this.name}_bucket` });
      }
      values.push({ labels, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: this.aggregator, values };
  }

  /** An unlabelled histogram shows its zero buckets before its first observation, as prom-client's do. */
  reset(): void {
    this.#series.clear();
    if (this.#label === null) this.#series.one('');
  }
}

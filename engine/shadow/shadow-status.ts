/**
 * What `postern status` shows about shadow scripts: per listener, how many shadow calls gave the same
 * verdict as the live script, a different one, failed, or were skipped. Read from the metric, so that
 * under `postern serve` the supervisor sums its workers' counts from the metrics it already gathers.
 */
import type { MetricObjectWithValues, MetricValue } from 'prom-client';

export type ShadowCounts = Record<string, { same: number; different: number; error: number; skipped: number }>;

const NAME = 'postern_shadow_calls_total';

export function shadowCounts(processes: ReadonlyArray<ReadonlyArray<MetricObjectWithValues<MetricValue<string>>>>): ShadowCounts {
  const out: ShadowCounts = {};
  for (const metrics of processes) {
    for (const v of metrics.find((m) => m.name === NAME)?.values ?? []) {
      const listener = String(v.labels.listener);
      const result = String(v.labels.result) as keyof ShadowCounts[string];
      const counts = out[listener] ??= { same: 0, different: 0, error: 0, skipped: 0 };
      if (result in counts) counts[result] += v.value;
    }
  }
  return out;
}

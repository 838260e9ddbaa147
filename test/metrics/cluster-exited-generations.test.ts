// Under `postern serve` an exited child's counters are kept (cluster-metrics.ts). Its script verdicts carried
// the child's own generation serial: kept under it, each child that exits after a reload added series for the
// supervisor's life. They are kept under generation="exited", the counts whole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterMetrics, type MetricsAnswer } from '../../engine/metrics/cluster-metrics.ts';

const verdicts = (generation: number, value: number): MetricsAnswer => [{
  name: 'postern_script_verdicts_total', help: 'h', type: 'counter', aggregator: 'sum',
  values: [{ labels: { listener: 'mx', hook: 'rcptto', verdict: 'reject', generation: String(generation), source: 'smtp' }, value }],
}] as unknown as MetricsAnswer;

test('20 children exiting each at another generation: one kept series per hook and verdict, every count in it', async () => {
  const cluster = new ClusterMetrics();
  for (let i = 1; i <= 20; i++) {
    const child = {};
    cluster.answered(child, verdicts(i, i));
    cluster.exited(child);
  }
  const live = {};
  const metric = (await cluster.merged([], [cluster.answered(live, verdicts(21, 1))]).getMetricsAsJSON()).find((m) => m.name === 'postern_script_verdicts_total')!;
  const series = metric.values.map((v) => [v.labels.generation, v.value]);
  assert.deepEqual(series.sort(), [['21', 1], ['exited', 210]].sort());
});

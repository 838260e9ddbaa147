// engine/metrics: the metrics Postern registers are the ones docs/operations.md lists, and the hot metrics
// (plain maps instead of prom-client's label hashing) scrape exactly as prom-client's own counter and
// histogram would for the same updates, alone and summed over processes by prom-client's aggregator.
// (That they move by what a real session did: test/admin/admin-listener.test.ts (metrics), test/cluster/admin.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AggregatorRegistry, Counter, Histogram, Registry } from 'prom-client';
import { registry } from '../../engine/metrics/metrics.ts';
import { HotCounter, HotHistogram } from '../../engine/metrics/hot-metrics.ts';
import { CONNECTION_REFUSALS } from '../../engine/smtp/connection-refusals.ts';

test('every metric has its row in docs/operations.md\'s table, and every metric the page names exists', async () => {
  const doc = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const own = (n: string): boolean => !/^postern_(process|nodejs)_/.test(n);
  // The table's rows, not any mention: a metric named only in prose (or an alert) has no type, labels or meaning given.
  const rows = new Set([...doc.matchAll(/^\| `(postern_[a-z_]+)` \|/gm)].map((m) => m[1]!));
  const named = new Set([...doc.matchAll(/\b(postern_[a-z_]+[a-z])\b/g)].map((m) => m[1]!).filter(own));
  const ours = (await registry.getMetricsAsJSON()).map((m) => m.name).filter(own);
  assert.deepEqual([...ours].sort().filter((n) => !rows.has(n)), [], 'metrics without a row in docs/operations.md');
  assert.deepEqual([...named].sort().filter((n) => !ours.includes(n)), [], 'docs/operations.md names metrics that do not exist');
});

test('prom-client\'s process CPU counters scrape (engine/metrics/prom-client-parts.ts stands in for their exemplar dependency)', async () => {
  const text = await registry.metrics();
  for (const name of ['postern_process_cpu_user_seconds_total', 'postern_process_cpu_system_seconds_total', 'postern_process_cpu_seconds_total']) {
    assert.match(text, new RegExp(`^${name} \\d`, 'm'), name);
  }
});

test('docs/operations.md gives each metric its type and labels as the code has them', async () => {
  const doc = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const rows = [...doc.matchAll(/^\| `(postern_[a-z_]+)` \| (\w+) \|([^|]*)\|/gm)];
  assert.ok(rows.length >= 20, `found ${rows.length} rows`);
  for (const [, name, type, labels] of rows) {
    const metric = registry.getSingleMetric(name!) as unknown as { labelNames?: readonly string[] } | undefined;
    assert.ok(metric, `${name} is documented but not registered`);
    const json = (await registry.getMetricsAsJSON()).find((m) => m.name === name)!;
    assert.equal(type, json.type, `${name}: documented as a ${type}, is a ${json.type}`);
    const documented = labels!.split(',').map((l) => l.trim()).filter(Boolean);
    assert.deepEqual(documented, [...(metric.labelNames ?? [])], `${name}: documented labels`);
  }
});

test('docs/operations.md names every reason of postern_smtp_connections_refused_total, and no other', async () => {
  const doc = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const row = /^\| `postern_smtp_connections_refused_total` \|.*$/m.exec(doc)![0];
  // The reasons are the code spans of the row's list, before the note on scripts.
  const listed = [...row.split('each once:')[1]!.split('; a script')[0]!.matchAll(/(?:^\s*|\), |, )`([a-z-]+)`/g)].map((m) => m[1]!);
  assert.deepEqual([...listed].sort(), [...CONNECTION_REFUSALS].sort());
});

test('every metric the other pages name (README.md, docs/*.md, examples/*/README.md) exists, with the labels they give it', async () => {
  const root = new URL('../../', import.meta.url).pathname;
  const pages = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md') && f !== 'operations.md' && f !== 'benchmarks.md').map((f) => `docs/${f}`),
    ...readdirSync(join(root, 'examples')).map((d) => `examples/${d}/README.md`).filter((f) => existsSync(join(root, f)))];
  const own = (n: string): boolean => !/^postern_(process|nodejs)_/.test(n);
  const ours = new Map((await registry.getMetricsAsJSON()).map((m) => [m.name, m]));
  const wrong: string[] = [];
  let named = 0;
  for (const page of pages) {
    for (const [, name, labels] of readFileSync(join(root, page), 'utf8').matchAll(/`(postern_[a-z_]+[a-z])(?:\{([a-z_,= "]*)\})?[`{ ]/g)) { // in code spans: not HAProxy's backend names
      if (!own(name!)) continue;
      named++;
      const metric = registry.getSingleMetric(name!) as unknown as { labelNames?: readonly string[] } | undefined;
      if (!ours.has(name!) || !metric) { wrong.push(`${page}: ${name} does not exist`); continue; }
      const given = (labels ?? '').split(',').map((l) => l.split('=')[0]!.trim()).filter(Boolean);
      const unknown = given.filter((l) => !(metric.labelNames ?? []).includes(l));
      if (unknown.length) wrong.push(`${page}: ${name} has no label ${unknown.join(', ')} (it has ${(metric.labelNames ?? []).join(', ') || 'none'})`);
    }
  }
  assert.ok(named >= 5, `found ${named} metric names`);
  assert.deepEqual(wrong, []);
});

/** The same updates to a hot metric and to prom-client's, each in a registry of its own: their scrape text. */
async function scrapes(update: (hot: { counter: HotCounter; plain: HotCounter; histogram: HotHistogram; unlabelled: HotHistogram }, prom: {
  counter: Counter<string>; plain: Counter<string>; histogram: Histogram<string>; unlabelled: Histogram<string>;
}) => void): Promise<{ hot: Registry; prom: Registry }> {
  const bounds = [0.001, 0.01, 0.1, 1];
  const hotRegistry = new Registry();
  const promRegistry = new Registry();
  const hot = {
    counter: new HotCounter('x_total', 'help', ['hook', 'generation']),
    plain: new HotCounter('y_total', 'help'),
    histogram: new HotHistogram('z_seconds', 'help', 'hook', bounds),
    unlabelled: new HotHistogram('w_seconds', 'help', null, bounds),
  };
  for (const m of Object.values(hot)) hotRegistry.registerMetric(m as unknown as Parameters<Registry['registerMetric']>[0]);
  const prom = {
    counter: new Counter({ name: 'x_total', help: 'help', labelNames: ['hook', 'generation'], registers: [promRegistry] }),
    plain: new Counter({ name: 'y_total', help: 'help', registers: [promRegistry] }),
    histogram: new Histogram({ name: 'z_seconds', help: 'help', labelNames: ['hook'], buckets: bounds, registers: [promRegistry] }),
    unlabelled: new Histogram({ name: 'w_seconds', help: 'help', buckets: bounds, registers: [promRegistry] }),
  };
  update(hot, prom);
  return { hot: hotRegistry, prom: promRegistry };
}

/** Scrape text with each metric's lines sorted (series order is not part of the format). */
async function normalized(r: Pick<Registry, 'metrics'>): Promise<string> {
  const text = await r.metrics();
  return text.split('\n\n').map((block) => block.split('\n').sort().join('\n')).sort().join('\n\n');
}

const UPDATES = (hot: Parameters<Parameters<typeof scrapes>[0]>[0], prom: Parameters<Parameters<typeof scrapes>[0]>[1]): void => {
  for (const [hook, generation] of [['rcptto', 1], ['rcptto', 1], ['data', 2], ['rcptto', 2]] as const) {
    hot.counter.inc(hook, generation);
    prom.counter.inc({ hook, generation });
  }
  hot.plain.add(1234);
  prom.plain.inc(1234);
  // Values on a bucket's bound belong to it (le: less or equal), beyond the last one to +Inf.
  for (const [v, hook] of [[0.0005, 'mailfrom'], [0.001, 'mailfrom'], [0.05, 'data'], [1, 'data'], [7, 'mailfrom']] as const) {
    hot.histogram.observe(v, hook);
    prom.histogram.observe({ hook }, v);
    hot.unlabelled.observe(v);
    prom.unlabelled.observe(v);
  }
};

test('hot counters and histograms scrape as prom-client\'s do, before and after updates', async () => {
  const idle = await scrapes(() => undefined);
  assert.equal(await normalized(idle.hot), await normalized(idle.prom), 'no update yet: the same zero series');
  const used = await scrapes(UPDATES);
  assert.equal(await normalized(used.hot), await normalized(used.prom));
  assert.match(await used.hot.metrics(), /^z_seconds_bucket\{le="0\.001",hook="mailfrom"\} 2$/m);
});

test('summed over processes by the aggregator (postern serve\'s /metrics), they still match', async () => {
  const a = await scrapes(UPDATES);
  const b = await scrapes(UPDATES);
  const hot = AggregatorRegistry.aggregate([await a.hot.getMetricsAsJSON(), await b.hot.getMetricsAsJSON()]);
  const prom = AggregatorRegistry.aggregate([await a.prom.getMetricsAsJSON(), await b.prom.getMetricsAsJSON()]);
  assert.equal(await normalized(hot), await normalized(prom));
  assert.match(await hot.metrics(), /^x_total\{hook="rcptto",generation="1"\} 4$/m);
});

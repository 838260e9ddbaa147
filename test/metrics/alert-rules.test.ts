// The Prometheus alert rules of docs/operations.md ("Alerts") are what an administrator pastes into
// Prometheus: promtool (Debian's prometheus package) accepts them, and every metric they query is one
// Postern registers, with the labels they group by, match on or print ($labels.x).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { registry } from '../../engine/metrics/metrics.ts';
import { needs, run } from '../helpers/example.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-alerts-');

interface Rule { alert: string; expr: string; annotations?: Record<string, string> }

async function alertRules(): Promise<{ text: string; rules: Rule[] }> {
  const doc = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('### Alerts'));
  const text = /```yaml\n([^]*?)\n```/.exec(section)?.[1];
  assert.ok(text, 'the yaml block under "### Alerts"');
  const rules = (parse(text) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules);
  assert.ok(rules.length >= 5, `${rules.length} rules`);
  return { text, rules };
}

test('promtool accepts the alert rules of docs/operations.md', needs('promtool'), async () => {
  const { text, rules } = await alertRules();
  const r = await run('promtool', ['check', 'rules', await scratch.file('postern.rules.yml', text)]);
  assert.equal(r.code, 0, r.output);
  assert.match(r.stdout, new RegExp(`SUCCESS: ${rules.length} rules found`), r.output);
});

test('every metric an alert queries is registered, with the labels the alert uses', async () => {
  const { rules } = await alertRules();
  const names = (await registry.getMetricsAsJSON()).map((m) => m.name);
  for (const rule of rules) {
    const metrics = [...new Set([...rule.expr.matchAll(/\bpostern_[a-z_]+/g)].map((m) => m[0]))];
    assert.ok(metrics.length > 0, `${rule.alert}: queries no postern metric`);
    const labels = new Set(['instance', 'job']); // added by Prometheus to every scraped series
    for (const name of metrics) {
      assert.ok(names.includes(name), `${rule.alert}: ${name} is not a metric Postern registers`);
      const metric = registry.getSingleMetric(name) as unknown as { labelNames?: readonly string[] };
      for (const l of metric.labelNames ?? []) labels.add(l);
    }
    const used = [
      ...[...rule.expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)].flatMap((m) => m[1]!.split(',').map((l) => l.trim())),
      ...[...rule.expr.matchAll(/\{([^}]*)\}/g)].flatMap((m) => [...m[1]!.matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)].map((x) => x[1]!)),
      ...Object.values(rule.annotations ?? {}).flatMap((a) => [...a.matchAll(/\$labels\.(\w+)/g)].map((m) => m[1]!)),
    ].filter(Boolean);
    for (const l of used) assert.ok(labels.has(l), `${rule.alert}: label "${l}" is not on ${metrics.join(', ')}`);
  }
});

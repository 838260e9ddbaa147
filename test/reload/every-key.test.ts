// Every configuration key has a reload decision (test/reload/key-decisions.ts): in force at the reload, or
// named in pendingRestart. A key added to the schema without one fails here; a start-only key that the
// reload neither applies nor names (silently ignored) fails here too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stringify } from 'yaml';
import { configKeys } from '../../engine/config/describe.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { serveRestartNeeded } from '../../engine/cluster/supervisor.ts';
import { restartNeeded } from '../../engine/reload/restart-needed.ts';
import { BASE, DECISIONS, type Draft } from './key-decisions.ts';

const parse = (c: Draft) => parseConfig(stringify(c), '/etc/postern/postern.yaml', '/etc/postern').config;

test('every key of the schema has a reload decision, and no decision names a key the schema lacks', () => {
  const keys = configKeys().map((k) => k.path);
  assert.deepEqual(keys.filter((k) => !DECISIONS[k]), [], 'keys without a reload decision in test/reload/key-decisions.ts');
  assert.deepEqual(Object.keys(DECISIONS).filter((k) => !keys.includes(k)), [], 'decisions for keys the schema does not have');
});

test('each key changed alone: a restart key is named in pendingRestart, and only it; a live key names nothing', () => {
  const wrong: string[] = [];
  for (const [key, d] of Object.entries(DECISIONS)) {
    if (d.section) continue;
    const before = BASE();
    d.from?.(before);
    const after = structuredClone(before);
    d.change!(after);
    const [was, now] = [parse(before), parse(after)];
    assert.notDeepEqual(was, now, `${key}: the change changes the configuration`);
    const pending = (d.serveOnly ? serveRestartNeeded : restartNeeded)(was, now);
    if (d.restart ? !pending.length || !pending.every((p) => d.restart!.test(p)) : pending.length) wrong.push(`${key}: ${JSON.stringify(pending)}`);
    // Under serve the supervisor's list is the single process's and more: the same decision there.
    if (!d.serveOnly && JSON.stringify(serveRestartNeeded(was, now)) !== JSON.stringify(pending)) wrong.push(`${key}: serve differs`);
  }
  assert.deepEqual(wrong, []);
});

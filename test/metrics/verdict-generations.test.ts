// postern_script_verdicts_total has a generation label: each reload that changes something makes a new
// generation, so the series of generations no longer running must go, or /metrics grows with every reload.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { until } from '../helpers/wait.ts';
import { mailFromReply, verdictScript } from '../reload/helpers.ts';
import { PolicyGeneration } from '../../engine/policy/generation.ts';

test('20 reloads with a verdict each: only the running generation keeps verdict series', async () => {
  const s = await startTestServer({
    config: 'admin: { listen: "127.0.0.1:0" }\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0", limits: { greetingDelayMs: 0 } }\nsandbox: { isolates: 1 }\n',
    scripts: { 'mailfrom.js': verdictScript('v0') },
  });
  try {
    const first = s.runtime.generation.serial;
    for (let i = 1; i <= 20; i++) {
      await writeFile(join(s.dir, 'scripts', 'mailfrom.js'), verdictScript(`v${'i'.repeat(i)}`));
      // The file watcher may be reloading already: SIGHUP again until a session sees this version.
      await until(`version ${i} in force`, async () => {
        await s.reloader.reload('SIGHUP');
        return await mailFromReply(s) === `550 5.7.1 v${'i'.repeat(i)}`;
      });
    }
    await PolicyGeneration.allTornDown();
    assert.ok(s.runtime.generation.serial >= first + 20);
    const generations = async (): Promise<Set<string>> => new Set([...(await scrapeMetrics(s.admin!.address.port)).keys()]
      .filter((k) => k.startsWith('postern_script_verdicts_total{') && k.includes('hook="mailfrom"'))
      .map((k) => /generation="(\d+)"/.exec(k)![1]!)
      .filter((g) => Number(g) >= first)); // other tests' servers in this process are not ours
    // The last session's release of the previous generation may come a turn after its QUIT's reply; and the file
    // watcher's own reload of the last edit may come after the SIGHUP that put it in force (a generation without a
    // verdict yet): a verdict of the generation running now, then only its series.
    const only = async (): Promise<{ running: string; series: string[] }> => {
      await mailFromReply(s);
      return { running: String(s.runtime.generation.serial), series: [...await generations()] };
    };
    await until('old generations\' verdict series dropped', async () => {
      const { running, series } = await only();
      return series.length === 1 && series[0] === running;
    }, { timeoutMs: 10_000 }).catch(() => undefined);
    const { running, series } = await only();
    assert.deepEqual(series, [running]);
  } finally { await s.stop(); }
});

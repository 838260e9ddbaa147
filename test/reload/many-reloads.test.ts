// 250 reloads: old generations are released (isolates disposed) and memory settles. Each reload builds a generation
// with two isolates (some 30 ms of CPU): every retired generation must also be collected (a weak reference to each,
// cleared), which finds a generation kept by anything, whatever its size (with retire() disposing nothing it fails at
// the first sample, 25 reloads); RSS finds what is kept outside the JS heap (an isolate not disposed is megabytes: the
// 100 reloads between the middle and the last sample, at the 4.5 MB a reload once measured, are far past the allowance).
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { PolicyGeneration } from '../../engine/policy/generation.ts';

test('250 forced reloads with live sessions: every retired generation is collected, and memory returns to a stable level', async () => {
  const s = await startTestServer({
    config: 'listeners:\n  - { name: mx, listen: "127.0.0.1:0", limits: { greetingDelayMs: 0 } }\nsandbox: { isolates: 2 }\n',
    scripts: { 'mailfrom.js': `export default (ctx) => ctx.address.domain === 'x.example' ? reject('no') : undefined;`, 'rcptto.js': 'export default () => {};' },
  });
  const total = Number(process.env.POSTERN_RELOADS ?? 250);
  const every = Math.max(1, Math.floor(total / 10));
  const generations: Array<WeakRef<PolicyGeneration>> = [];
  const rss: number[] = [];
  const t0 = performance.now();
  try {
    for (let i = 1; i <= total; i++) {
      const o = await s.reloader.reload('SIGHUP');
      assert.equal(o.ok, true, o.errors.join('\n'));
      generations.push(new WeakRef(s.runtime.generation));
      if (i % every === 0) {
        // a session on the new generation still works
        const c = await SmtpTestClient.connect(s.port('mx'));
        await c.hello();
        assert.equal((await c.command('MAIL FROM:<a@x.example>')).text, '550 5.7.1 no');
        await c.quit();
        await PolicyGeneration.allTornDown(); // retired generations' isolates are gone before measuring
        await new Promise((r) => setImmediate(r)); // a weak reference made in this job holds its target until it ends
        collectGarbage();
        // The one in force and the one before it (the reloader's previous) may be held; none older.
        const kept = generations.slice(0, -2).filter((g) => g.deref() !== undefined).map((g) => g.deref()!.serial);
        assert.deepEqual(kept, [], `after ${i} reloads, retired generations still held`);
        rss.push(process.memoryUsage().rss / 2 ** 20);
      }
    }
    const stats = await [...s.runtime.generation.sandboxes][0]!.stats();
    const heap = stats.isolates.map((x) => ((x.heapUsedBytes ?? 0) / 2 ** 20).toFixed(1)).join('/');
    console.log(`${total} reloads in ${((performance.now() - t0) / 1000).toFixed(1)} s; RSS MB every ${every}: ${rss.map((x) => x.toFixed(0)).join(' ')}; isolate heap MB ${heap}`);
    // Stable: the last samples grow no more than a small allowance over the middle ones (no per-reload leak).
    const mid = rss[Math.floor(rss.length / 2)]!;
    const last = rss.at(-1)!;
    assert.ok(last - mid < 60, `RSS grew from ${mid.toFixed(0)} to ${last.toFixed(0)} MB in the second half`);
  } finally { await s.stop(); }
});

/** A full collection before each sample, so RSS measures what is kept rather than garbage not yet collected. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

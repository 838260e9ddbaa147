/**
 * Hot reload creates a sandbox per configuration generation and disposes the old one: creating and
 * disposing must not leak. Prints the measured numbers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from '../../engine/sandbox/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';

const MB = 1024 * 1024;
const CYCLES = 100;

test('100 create/dispose cycles keep RSS and heap bounded', async () => {
  const host = recordingHost();
  const scripts = [
    // A top level that allocates, so a leaked isolate would be expensive and show up.
    js('auth', 'const names = Array.from({ length: 20000 }, (_, i) => "user" + i);\nexport default (ctx) => accept({ username: names[ctx.n % names.length] });'),
    js('rcptto', 'export default () => reject("no relay", { code: 554 });'),
  ];
  const teardowns: Array<Promise<void>> = []; // awaited at the end: the process must not exit during one
  const cycle = async (n: number): Promise<void> => {
    const sandbox = await Sandbox.create({ host, scripts, isolates: 2 });
    assert.deepEqual(await sandbox.invoke('auth', { n }, 'c1'), { verdict: 'accept', username: `user${n}` });
    teardowns.push(sandbox.dispose());
  };
  for (let i = 0; i < 20; i++) await cycle(i); // warm up: code caches, thread pool, allocator arenas
  const before = process.memoryUsage();
  const t0 = performance.now();
  // 100: with dispose() left out, these grew RSS by some 770 MB (200 isolates), far past the allowance.
  for (let i = 0; i < CYCLES; i++) await cycle(i);
  const ms = performance.now() - t0;
  const after = process.memoryUsage();
  const rss = (after.rss - before.rss) / MB;
  const heap = (after.heapUsed - before.heapUsed) / MB;
  console.log(`# ${CYCLES} create/dispose cycles (2 isolates each): ${(ms / CYCLES).toFixed(1)} ms per cycle; ` +
    `RSS ${(before.rss / MB).toFixed(1)} → ${(after.rss / MB).toFixed(1)} MB (${rss >= 0 ? '+' : ''}${rss.toFixed(1)}), ` +
    `host heap ${(before.heapUsed / MB).toFixed(1)} → ${(after.heapUsed / MB).toFixed(1)} MB (${heap >= 0 ? '+' : ''}${heap.toFixed(1)})`);
  // 200 leaked isolates would hold hundreds of MB; allow allocator noise only.
  assert.ok(rss < 48, `RSS grew by ${rss.toFixed(1)} MB`);
  assert.ok(heap < 16, `host heap grew by ${heap.toFixed(1)} MB`);
  await Promise.all(teardowns);
});

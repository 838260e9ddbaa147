/**
 * Measures (does not assert) the cost of one invoke for a trivial script with a realistic context of
 * about 3 KB (including a PEM certificate): median and p99 per call, sequential and concurrent throughput.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authContext, js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

const SCRIPT = `export default function (ctx) {
  if (ctx.connection.clientCertificate?.verified) return accept({ username: ctx.connection.certificateIdentity ?? undefined });
}`;

const quantile = (sorted: number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;

test('invoke latency with a 3 KB context', async () => {
  const ctx = authContext();
  const size = JSON.stringify(ctx).length;
  await withSandbox({ host: recordingHost(), scripts: [js('auth', SCRIPT)], isolates: 2 }, async (sandbox) => {
    for (let i = 0; i < 500; i++) await sandbox.invoke('auth', ctx, 'c1');
    const samples: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 3000; i++) {
      const s = performance.now();
      const v = await sandbox.invoke('auth', ctx, 'c1');
      samples.push((performance.now() - s) * 1000);
      if (i === 0) assert.deepEqual(v, { verdict: 'accept', username: 'alice' });
    }
    const sequentialMs = performance.now() - t0;
    samples.sort((a, b) => a - b);

    const inFlight = 8;
    const total = 6000;
    const t1 = performance.now();
    let issued = 0;
    await Promise.all(Array.from({ length: inFlight }, async () => {
      while (issued++ < total) await sandbox.invoke('auth', ctx, 'c1');
    }));
    const concurrentMs = performance.now() - t1;

    const { fastPath } = await sandbox.stats();
    console.log(`# fast path: ${fastPath.calls} calls, ${fastPath.overruns} overruns`);
    console.log(`# invoke, ${size}-byte context, 2 isolates: median ${quantile(samples, 0.5).toFixed(0)} µs, ` +
      `p99 ${quantile(samples, 0.99).toFixed(0)} µs; sequential ${(3000 / (sequentialMs / 1000)).toFixed(0)} calls/s; ` +
      `${inFlight} in flight ${(total / (concurrentMs / 1000)).toFixed(0)} calls/s`);
  });
});

/**
 * Host operations take effect once per call however the scheduler runs it (engine/sandbox/operation-journal.ts):
 * a batch stopped at the end of its entry, a stopped attempt's leftover continuations, a re-run that asks
 * something else (fails closed), and a call abandoned at its deadline (in a child process: the stuck builtin
 * parks a thread for good, see deadlines.test.ts). The fast path is 1 ms and the scripts spin 10⁸
 * iterations (far past 1 ms even when the timer that stops them is late), so attempts are stopped; that they were is read from the stats' counters, not from time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { js, recordingHost } from './helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

const BURN = 'let x = 0; for (let i = 0; i < 1e8; i++) x += i;';

test('calls batched in one fast-path entry, stopped after their continuations counted, count once each', async () => {
  const store = new MemoryCounterStore();
  await withSandbox({
    host: { ...recordingHost(), store }, fastPathMs: 1, timeoutMs: 10_000, isolates: 2,
    // The second operation runs in the continuations at the end of the entry, mixed with the other calls'.
    scripts: [js('rcptto', `export default async (ctx) => {
      const r = await rate('k', 1000, 60);
      const n = await counter('c').add(1, 60);
      ${BURN}
      return reject(r.count + ' ' + n);
    }`)],
  }, async (sandbox) => {
    const calls = 6;
    // Invoked in one turn: one batch.
    const replies = await Promise.all(Array.from({ length: calls }, (_, n) => sandbox.invoke('rcptto', {}, `c${n}`)));
    const { fastPath } = await sandbox.stats();
    assert.ok(fastPath.overruns >= 1, 'the batch was stopped and its calls run again');
    assert.equal(await store.get('script:rate:k'), calls);
    assert.equal(await store.get('script:counter:c'), calls);
    // Each call saw its own count: the answers are a permutation of 1..calls.
    const seen = replies.map((r) => (r as { text: string }).text.split(' ').map(Number));
    assert.deepEqual(seen.map(([r]) => r).sort((a, b) => a! - b!), Array.from({ length: calls }, (_, i) => i + 1));
    assert.deepEqual(seen.map(([, n]) => n).sort((a, b) => a! - b!), Array.from({ length: calls }, (_, i) => i + 1));
  });
});

test('a stopped attempt\'s leftover continuation starts nothing', async () => {
  const store = new MemoryCounterStore();
  await withSandbox({
    host: { ...recordingHost(), store }, fastPathMs: 1, timeoutMs: 10_000, isolates: 1,
    // Not awaited: the .then runs whenever the microtasks run, also after the attempt was stopped.
    scripts: [js('rcptto', `export default (ctx) => {
      rate('k', 1000, 60).then(() => counter('c').add(1, 60));
      ${BURN}
      return reject('ok');
    }`)],
  }, async (sandbox) => {
    for (let n = 0; n < 3; n++) assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c1'), { verdict: 'reject', text: 'ok' });
    assert.ok((await sandbox.stats()).fastPath.overruns >= 1);
    assert.equal(await store.get('script:rate:k'), 3);
    assert.equal(await store.get('script:counter:c'), 3);
  });
});

test('a re-run that asks other operations than its stopped attempt fails closed, and logs why', async () => {
  const store = new MemoryCounterStore();
  const host = { ...recordingHost(), store };
  await withSandbox({
    host, fastPathMs: 1, timeoutMs: 10_000, isolates: 1,
    // Its key changes from one attempt to the next (a global it keeps): what it should count is unknown.
    scripts: [js('rcptto', `export default async (ctx) => {
      globalThis.attempt = (globalThis.attempt ?? 0) + 1;
      const counted = rate('k' + globalThis.attempt, 1000, 60);
      ${BURN}
      await counted;
      return accept();
    }`)],
  }, async (sandbox) => {
    await assert.rejects(sandbox.invoke('rcptto', {}, 'c1'), (e) => e instanceof ScriptFailure && /run again after a stop.*rate\["k2",1000,60\].*rate\["k1",1000,60\]/.test(e.message));
    assert.equal((await sandbox.stats()).failures.error, 1);
    assert.equal(await store.get('script:rate:k1'), 1, 'the stopped attempt counted once');
    assert.equal(await store.get('script:rate:k2'), 0, 'the diverging re-run counted nothing');
    assert.ok(host.logs.some((l) => l.level === 'error' && /run again after a stop/.test(l.message)), 'logged');
  });
});

test('a call abandoned at its deadline after counting is not counted again by anything', async () => {
  const child = spawn(process.execPath, [fileURLToPath(new URL('./helpers/stuck-builtin.ts', import.meta.url)), 'once'], {
    stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000); // a hung child must not hang the suite
  const exit = await new Promise((resolve) => child.on('close', (code, signal) => resolve(signal ?? code)));
  clearTimeout(killer);
  const line = out.trim().split('\n').pop() ?? '';
  assert.ok(line.startsWith('{'), `the child printed no result (exit ${String(exit)}):\n${out}\n${err}`);
  const r = JSON.parse(line) as Record<string, unknown>;
  assert.deepEqual(r.stuck, { failure: 'timeout', message: 'no result within 2000 ms + 500 ms: the script could not be stopped, its isolate is replaced' });
  assert.equal(r.abandoned, 1);
  assert.ok(Number(r.overruns) >= 1, 'the first attempt was stopped on the fast path and run again');
  assert.equal(r.countAfterStuck, 1, 'counted once: the re-run got the stopped attempt\'s answer');
  assert.deepEqual(r.next, { value: { verdict: 'reject', text: 'no 2' } });
  assert.equal(r.count, 2, 'the next call counted once; nothing counted the abandoned call again');
  assert.equal(r.after, 1, 'only the next call got past the stuck step');
});

/**
 * Host operations take effect once per call however the scheduler runs it (engine/sandbox/operation-journal.ts):
 * a batch stopped at the end of its entry, a stopped attempt's leftover continuations, a re-run that asks
 * something else (fails closed), and a call abandoned at its deadline (in a child process: the stuck builtin
 * parks a thread for good, see deadlines.test.ts). The fast path is 1 ms and the scripts spin 2·10⁷ iterations
 * (counted work, not time; an attempt run again spins them too, within a generous time limit), so attempts are
 * stopped. Whether a stop is counted as an overrun depends on the machine's load (a stop whose aftermath the
 * budget also cuts short is run again without being counted), so the counts of the store are what is asserted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

/** Call 0 spins (on every attempt); the others do not. */
const CALL_0_SPINS = 'if (ctx.n === 0) { let x = 0; for (let i = 0; i < 5e7; i++) x += i; }';

test('calls batched in one fast-path entry, stopped after their continuations counted, count once each', async () => {
  const store = new MemoryCounterStore();
  await withSandbox({
    host: { ...recordingHost(), store }, fastPathMs: 1, timeoutMs: 30_000, isolates: 1, // a hang guard: call 0 loops 5·10⁷ times on every attempt (10 s ran out in such tests at load 40)
    // The second operation runs in the continuations at the end of the entry, mixed with the other calls'
    // (each call's first continuation runs before any second one: all add() before the loop).
    scripts: [js('rcptto', `export default async (ctx) => {
      const r = await rate('k', 1000, 60);
      const n = await counter('c').add(1, 60);
      ${CALL_0_SPINS}
      return reject(r.count + ' ' + n);
    }`)],
  }, async (sandbox) => {
    const calls = 6;
    // Invoked in one turn: one batch.
    const replies = await Promise.all(Array.from({ length: calls }, (_, n) => sandbox.invoke('rcptto', { n }, `c${n}`)));
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
    host: { ...recordingHost(), store }, fastPathMs: 1, timeoutMs: 30_000, isolates: 1, // a hang guard: call 0 loops 5·10⁷ times on every attempt (10 s ran out in such tests at load 40)
    // Not awaited: the .then runs whenever the microtasks run, also after the attempt was stopped.
    scripts: [js('rcptto', `export default (ctx) => {
      rate('k', 1000, 60).then(() => counter('c').add(1, 60));
      ${CALL_0_SPINS}
      return reject('ok');
    }`)],
  }, async (sandbox) => {
    for (let n = 0; n < 3; n++) assert.deepEqual(await sandbox.invoke('rcptto', { n }, 'c1'), { verdict: 'reject', text: 'ok' });
    assert.equal(await store.get('script:rate:k'), 3);
    assert.equal(await store.get('script:counter:c'), 3);
  });
});

test('a re-run that asks other operations than its stopped attempt fails closed, and logs why', async () => {
  const store = new MemoryCounterStore();
  const host = { ...recordingHost(), store };
  await withSandbox({
    host, fastPathMs: 1, timeoutMs: 30_000, isolates: 1, // a hang guard: each call loops 2·10⁷ times (10 s ran out in such tests at load 40)
    // Its key changes from one attempt to the next (a module-level count): what it should count is unknown.
    scripts: [js('rcptto', `let attempt = 0;
    export default async (ctx) => {
      attempt++;
      const counted = rate('k' + attempt, 1000, 60);
      let x = 0; for (let i = 0; i < 2e7; i++) x += i;
      await counted;
      return accept();
    }`)],
  }, async (sandbox) => {
    // Calls until one is stopped after its rate() (on a loaded machine the stop may come before it, or not at all).
    let failure: ScriptFailure | undefined;
    for (let n = 0; n < 20 && !failure; n++) {
      await sandbox.invoke('rcptto', {}, `c${n}`).catch((e: unknown) => { if (e instanceof ScriptFailure) failure = e; else throw e; });
    }
    const m = /run again after a stop, the call's host operation #1 was rate\["(k\d+)",1000,60\] where the stopped attempt's was rate\["(k\d+)",1000,60\]/.exec(failure?.message ?? '');
    assert.ok(m, failure?.message ?? 'no call failed');
    assert.equal((await sandbox.stats()).failures.error, 1);
    assert.equal(await store.get(`script:rate:${m[2]}`), 1, 'the stopped attempt counted once');
    assert.equal(await store.get(`script:rate:${m[1]}`), 0, 'the diverging re-run counted nothing');
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
  const killer = setTimeout(() => child.kill('SIGKILL'), 120_000); // a hung child must not hang the suite
  const exit = await new Promise((resolve) => child.on('close', (code, signal) => resolve(signal ?? code)));
  clearTimeout(killer);
  const line = out.trim().split('\n').pop() ?? '';
  assert.ok(line.startsWith('{'), `the child printed no result (exit ${String(exit)}):\n${out}\n${err}`);
  const r = JSON.parse(line) as Record<string, unknown>;
  assert.deepEqual(r.stuck, { failure: 'timeout', message: 'no result within 5000 ms + 500 ms: the script had not stopped' });
  assert.equal(r.abandoned, 1);
  assert.equal(r.countAfterStuck, Number(r.calls) - 1, 'counted once per call: the re-run got the stopped attempt\'s answer');
  assert.deepEqual(r.next, { value: { verdict: 'reject', text: 'no 99' } });
  assert.equal(r.count, r.calls, 'the next call counted once; nothing counted the abandoned call again');
  assert.equal(r.after, Number(r.calls) - 1, 'every call but the abandoned one got past the stuck step, once');
});

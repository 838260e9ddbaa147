/**
 * Every call ends by its deadline (timeoutMs + DEADLINE_SLACK_MS), whatever the script does — even inside
 * a V8 builtin that never checks for interrupts, which isolated-vm cannot stop. Such a script parks a thread
 * for good and the process can then no longer exit normally, so these cases run in a child process
 * (helpers/stuck-builtin.ts) that reports what it saw and ends itself with SIGKILL.
 *
 * Only the isolate-thread variant (fastPathMs 0) can be tested in-process: on the fast path the same
 * builtin holds the event-loop thread itself, which only ending the process recovers (the cluster's
 * watchdog does, naming the script from running-call.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Sandbox, ScriptFailure, runningCall, runningCallTable, describeRunning, stuckLoadScripts } from '../../engine/sandbox/index.ts';
import { js, recordingHost, SCRIPT_DIR } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

const CHILD = fileURLToPath(new URL('./helpers/stuck-builtin.ts', import.meta.url));

function runChild(scenario: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, scenario], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, NODE_NO_WARNINGS: '1' } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000); // generous: a hung child must not hang the suite
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      const line = out.trim().split('\n').pop() ?? '';
      try {
        resolve({ ...JSON.parse(line) as Record<string, unknown>, exit: signal ?? code });
      } catch {
        reject(new Error(`child ${scenario} printed no result (exit ${signal ?? code}): ${out}`));
      }
    });
  });
}

const deadlineFailure = { failure: 'timeout', message: 'no result within 1000 ms + 500 ms: the script had not stopped' };

test('a call stuck in an uninterruptible builtin fails by its deadline; others are served during and after; the process is flagged unrecoverable', async () => {
  const r = await runChild('call');
  assert.deepEqual(r.during, { value: { verdict: 'reject', text: 'no 1' } }, 'another isolate served a call meanwhile');
  assert.deepEqual(r.stuck1, deadlineFailure);
  assert.deepEqual(r.stuck2, deadlineFailure);
  assert.deepEqual(r.after, [2, 3, 4, 5, 6, 7].map((n) => ({ value: { verdict: 'reject', text: `no ${n}` } })), 'after two stuck calls, calls are still served');
  assert.equal(r.abandoned, 2);
  assert.equal(r.timeouts, 2);
  assert.match(String(r.unrecoverable), /Script failed to terminate/);
  assert.equal(r.fatalLogged, true);
  assert.deepEqual(r.afterUnrecoverable, { value: { verdict: 'reject', text: 'no 8' } }, 'it keeps serving what it can');
  assert.equal(r.exit, 'SIGKILL');
});

test('a call waiting for an isolate that is stuck waits no longer than its own deadline', async () => {
  const r = await runChild('wait');
  assert.deepEqual(r.stuck, deadlineFailure);
  // It either got the replacement isolate in time or failed closed at its deadline; never a hang.
  const waiting = r.waiting as { value?: unknown; failure?: string };
  assert.ok(waiting.failure === 'timeout' || JSON.stringify(waiting.value) === JSON.stringify({ verdict: 'reject', text: 'no 1' }), JSON.stringify(waiting));
  assert.deepEqual(r.after, { value: { verdict: 'reject', text: 'no 2' } });
});

test('a call whose isolate runs out of memory outside its heap limit is blamed when the process is told to recycle', async () => {
  const r = await runChild('oom');
  assert.match(String(r.unrecoverable), /out-of-memory/i);
  assert.equal(r.settled, false, 'the signal came long before the call\'s deadline');
  // Blamed only at the deadline before: a worker, replaced at the signal, wrote a crash record naming no script, so
  // the supervisor never fenced it, and every worker that ran it was replaced in turn.
  assert.deepEqual(r.blamed, [`rcptto:${SCRIPT_DIR}/rcptto.js`]);
});

test('a call stuck past its deadline whose sandbox is disposed meanwhile (a reload\'s old generation) is blamed when the process is told to recycle', async () => {
  const r = await runChild('retired');
  assert.equal((r.stuck as { failure?: string }).failure, 'timeout');
  assert.match(String(r.unrecoverable), /./);
  // Before: an overdue isolate was reported abandoned only by the pool's sweep once shown stuck; a dispose in between
  // forgot it, so the worker replaced for the parked thread blamed no script, and the supervisor never fenced it.
  assert.deepEqual(r.blamed, [`rcptto:${SCRIPT_DIR}/rcptto.js`]);
});

test('a top level stuck in an uninterruptible builtin fails the load, naming the file', async () => {
  const r = await runChild('load');
  assert.deepEqual(r.loadError, [{ file: `${SCRIPT_DIR}/helo.js`, line: 1, message: 'top level did not finish within 1000 ms and could not be stopped' }]);
});

test('a top level that loops is stopped with its file and line', async () => {
  await assert.rejects(Sandbox.create({
    host: recordingHost(), timeoutMs: 100,
    scripts: [js('helo', 'const x = 1;\nwhile (true) {}\nexport default () => accept();')],
  }), (e: Error & { errors?: Array<{ line: number; file: string }> }) => {
    assert.equal(e.errors?.[0]?.file, `${SCRIPT_DIR}/helo.js`);
    assert.equal(e.errors?.[0]?.line, 2);
    return true;
  });
});

/**
 * isolated-vm loses its stop when it comes while the isolate waits for a host helper (lookup(), sha256()): a top
 * level looping on one ran past its limit and its load gave up on it as stuck in a builtin — "could not be stopped",
 * the source refused in this process until its file changed (a top level bounded by a table's size, run again after
 * the table shrank, was refused unread), counted towards the stuck loads that recycle a worker. Disposing the
 * isolate ends such a loop at once: its thread comes back, so it is a top level that did not finish, no more.
 */
test('a top level looping on a host helper fails as one that did not finish, not as stuck; the same source is run again', async () => {
  const scripts = [js('rcptto', 'let i = 0;\nfor (;;) sha256(String(i++));\nexport default () => accept();')];
  for (const attempt of ['first', 'second']) {
    await assert.rejects(Sandbox.create({ host: recordingHost(), timeoutMs: 100, isolates: 1, scripts }), (e: Error & { errors?: Array<{ message: string }> }) => {
      assert.deepEqual(e.errors?.map((x) => x.message), ['top level did not finish within 1000 ms'], attempt);
      return true;
    });
  }
  assert.deepEqual(stuckLoadScripts(), [], 'no source is held as stuck');
});

test('a nested endless loop that catches is still stopped, and the isolate serves the next call', async () => {
  await withSandbox({
    host: recordingHost(), isolates: 1, timeoutMs: 100,
    scripts: [js('rcptto', 'export default (ctx) => { if (ctx.loop) for (;;) { try { for (;;) {} } catch {} } return reject("ok"); }')],
  }, async (sandbox) => {
    await assert.rejects(sandbox.invoke('rcptto', { loop: true }, 'c1'), (e) => e instanceof ScriptFailure && e.kind === 'timeout');
    assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c2'), { verdict: 'reject', text: 'ok' });
  });
});

test('the running-call marker names the script on the event-loop thread while a fast-path call runs, and which call of a batch runs now', async () => {
  const seen: number[] = [];
  const now: number[] = [];
  const words = new Int32Array(runningCall.buffer);
  await withSandbox({
    host: { lookup: () => { seen.push(runningCall.current()); now.push(Atomics.load(words, 1)); return null; }, log: () => {} },
    fastPathMs: 1000, timeoutMs: 2000,
        // Each lookup key once: the isolate remembers answers.
    scripts: [js('mailfrom', 'export default (ctx) => { lookup("t", ctx.k); return accept(); }'), js('rcptto', 'export default (ctx) => { lookup("t", ctx.k); }')],
  }, async (sandbox) => {
    assert.equal(runningCall.current(), 0, 'idle');
    await sandbox.invoke('mailfrom', { k: '1' }, 'c1');
    await Promise.all([sandbox.invoke('mailfrom', { k: '2' }, 'c2'), sandbox.invoke('rcptto', { k: '3' }, 'c3')]); // one batch
    assert.equal(runningCall.current(), 0, 'idle again');
    const table = runningCallTable();
    const names = seen.map((v) => describeRunning(v, table).map((s) => `${s.hook}:${s.file.split('/').pop()}:${s.sha256.length}`));
    assert.deepEqual(names[0], ['mailfrom:mailfrom.js:64']);
    assert.deepEqual(names[1], ['mailfrom:mailfrom.js:64', 'rcptto:rcptto.js:64'], 'a batch names all its scripts');
    assert.deepEqual(names[2], names[1]);
    // The call running now, written by the isolate's runtime: a watchdog blames the one stuck, not its batch.
    const running = seen.map((v, i) => describeRunning(v, table, now[i]).map((s) => s.hook));
    assert.deepEqual(running, [['mailfrom'], ['mailfrom'], ['rcptto']]);
    assert.equal(words.length, 4); // and words 2 and 3: the scripts' and the shadow scripts' log budgets spent (log-budget.ts)
  });
  assert.deepEqual(describeRunning(seen[0]!, runningCallTable()), [], 'a disposed sandbox leaves the table');
});

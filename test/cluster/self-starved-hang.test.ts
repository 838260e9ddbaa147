/**
 * A script can crowd its own worker's CPU: calls that outran the fast path keep isolate threads busy (a loop within a
 * long time limit), so the main thread, stuck in a builtin on the fast path, is runnable but waits for a CPU much of
 * the time, and its silence counts only the time it ran (silence-clock.ts). Here the worker is held to one CPU (a
 * cpuset-limited container) with three isolate threads busy beside it (isolated-vm's pool: one more than the host's
 * CPUs, whatever the process may use). The main thread got a quarter of the CPU, and was killed only once it had run
 * for the whole limit: after 4.4 s, and with more busy isolates than CPUs a hang outwaited BUSY_WITHOUT_TIMERS_MS.
 * A wait for a CPU the process's own threads held counts: the watchdog kills it before its main thread has run for
 * the limit (counted in CPU time, as the main thread's schedstat says, not in wall time), blaming the call that hung
 * (or, on a host loaded beyond this test's own load, the supervisor does, by the same count).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { HANG_MS, SUPERVISOR_HANG_MS } from '../../engine/cluster/process-model.ts';
import { ONE_WORKER, greeted, startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { runningMirror } from '../../engine/cluster/process-model.ts';

// The spinning calls in another hook than the hang: each of their fast-path attempts used up its budget, and three such
// overruns send a hook's calls straight to isolate threads for a minute (fast-path-policy.ts), which would have taken
// the hang off the main thread (seen: the hang then ran on an isolate thread until its 60 s deadline).
const SPIN = `export default function (ctx) {
  if (ctx.address.localPart === 'spin') { const end = Date.now() + 30000; while (Date.now() < end); return accept(); }
}
`;
const HANG = `export default function (ctx) {
  if (ctx.address.localPart === 'hang') return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1));
}
`;

/** The main thread's time on a CPU so far (ms), null once the process is gone. */
function mainRanMs(pid: number): number | null {
  try {
    return Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'latin1').split(' ')[0]) / 1e6;
  } catch {
    return null;
  }
}

async function isolateCalls(c: ClusterProcess, pid: number): Promise<number> {
  const bytes = await readFile(`${runningMirror(c.dataDir, pid)}.bin`).catch(() => null);
  if (!bytes || bytes.length < 8) return 0;
  const words = new Int32Array(new Uint8Array(bytes).buffer);
  return words.slice(1, 10).filter((w) => w !== 0).length;
}

test('a hang on the fast path while the script keeps isolate threads busy on the same CPU: killed by the watchdog, the call blamed', { timeout: 120_000 }, async () => {
  const c = await startCluster({ config: `${ONE_WORKER}sandbox: { timeoutMs: 60000, isolates: 4, isolatesPerClient: 4, fastPathMs: 5 }\n`, scripts: { 'mailfrom.ts': SPIN, 'rcptto.ts': HANG } });
  try {
    const pid = await workerPid(c, 0);
    const spinners = [];
    for (let i = 0; i < 3; i++) {
      const s = await greeted(c);
      spinners.push(s);
      void s.command('MAIL FROM:<spin@example.test>', 100_000).catch(() => null);
    }
    await c.waitFor('three calls on isolate threads', async () => (await isolateCalls(c, pid)) >= 3);
    execFileSync('taskset', ['-a', '-p', '-c', '1', String(pid)], { stdio: 'ignore' });
    const h = await greeted(c);
    assert.equal((await h.command('MAIL FROM:<a@example.test>')).code, 250);
    const before = mainRanMs(pid)!;
    void h.command('RCPT TO:<hang@example.test>', 100_000).catch(() => null);
    // The main thread's CPU time, sampled until the process is gone: the last sample is (nearly) its time at the kill.
    let last = before;
    for (let now = mainRanMs(pid); now !== null; now = mainRanMs(pid)) {
      last = now;
      await new Promise((r) => setTimeout(r, 10));
    }
    const blamed = await c.waitFor('the kill blamed on the call that hung', () => c.logs.find((l) => (l.pid === pid || l.childPid === pid) && /^worker 0 (hung in|died \(signal SIGKILL\) while running) rcptto \(/.test(String(l.msg))), 30_000);
    const ran = Math.round(last - before);
    if (/hung in/.test(String(blamed.msg))) {
      assert.ok(ran < HANG_MS / 2, `the watchdog killed it before its main thread ran for the limit (it ran ${ran} ms of the hang; 1/4 of the CPU)`);
    } else {
      // On a loaded host the watchdog thread, on the CPU of the busy isolates, may come late at every tick (each late
      // tick starts its count over): the supervisor, counting the same way, killed it, and blamed the call.
      assert.ok(ran < SUPERVISOR_HANG_MS / 2, `the supervisor killed it before its main thread ran for its limit (it ran ${ran} ms of the hang)`);
    }
    for (const s of [...spinners, h]) s.socket.destroy();
  } finally {
    await c.stop();
  }
});

// A script whose worker dies at once (a SIGSEGV in a builtin, a native abort) rather than hanging leaves no
// watchdog record: the supervisor blames the death on the scripts the worker's running-call mirror names,
// and after CRASHES_TO_FENCE such deaths the script is fenced (451 4.3.0, logged, in `postern status`).
// Stand-in for the crash: the script spins on an isolate thread (the event loop goes on, so no watchdog
// fires) and the test sends the worker SIGSEGV once the mirror shows the script running.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { readMirror } from '../../engine/sandbox/index.ts';
import { runningMirror } from '../../engine/cluster/process-model.ts';
import { CRASHES_TO_FENCE } from '../../engine/cluster/process-model.ts';
import { startCluster, greeted, load, spooled, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
// Ordinary recipients return at once; `crash` spins until its (long) time limit, past the fast path.
const SCRIPT = "export default function (ctx) { if (ctx.address.localPart === 'crash') { for (;;) {} } }\n";
const CONFIG = `${TWO_WORKERS}sandbox: { timeoutMs: 600000, isolates: 2 }\n`;

/**
 * One server for both cases, the death blamed on none first: it must neither name a script nor count towards the
 * fence the second case then reaches (a server of its own cost some 3 s of CPU to start and stop).
 */
let shared: ClusterProcess | undefined;
const server = async (): Promise<ClusterProcess> => (shared ??= await startCluster({ config: CONFIG, scripts: { 'rcptto.js': SCRIPT } }));
after(() => shared?.stop());

const restarts = async (c: ClusterProcess): Promise<number> => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);

/** The pid of the worker whose mirror shows rcptto.js running. */
async function workerRunningRcptto(c: ClusterProcess): Promise<number> {
  return c.waitFor('a worker running the crashing script', async () => {
    for (const p of (await c.cluster()).processes) {
      if (p.role !== 'worker' || !p.pid) continue;
      if (readMirror(runningMirror(c.dataDir, p.pid)).some((s) => s.hook === 'rcptto')) return p.pid;
    }
    return null;
  });
}

test('a worker killed while it runs no script is blamed on none', async () => {
  const c = await server();
  try {
    // An idle worker (no connection, no call): its mirror names nothing.
    const pid = await c.waitFor('worker 0', async () => (await c.cluster()).processes.find((p) => p.role === 'worker' && p.index === 0 && p.ready)?.pid);
    const client = await greeted(c); // rcptto.js runs once on one worker, and returns
    assert.equal((await client.sendMail('a@example.test', ['ok@example.test'])).code, 250);
    await client.quit();
    process.kill(pid, 'SIGSEGV');
    await c.waitFor('the replacement ready', async () => (await restarts(c)) >= 1 && (await c.cluster()).processes.every((p) => p.ready));
    assert.equal(c.logs.filter((l) => /while running/.test(String(l.msg))).length, 0);
    assert.equal((await c.cluster()).fences.length, 0);
  } catch (err) {
    await c.stop();
    shared = undefined;
    throw err;
  }
});

test('a script whose worker dies at once is blamed from the running-call mirror and fenced after 3 deaths; other clients are served, nothing acknowledged is lost', async () => {
  const c = await server();
  const loads: Array<ReturnType<typeof load>> = [];
  const traffic = (): ReturnType<typeof load> => { const l = load(c, 2); loads.push(l); return l; };
  try {
    const base = await restarts(c); // the death of the case before
    const acked: string[] = [];
    let stuck = 0;
    for (let i = 1; i <= CRASHES_TO_FENCE; i++) {
      await c.waitFor('both workers ready', async () => (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length === 2);
      // Ordinary clients are served between the deaths. They pause for the kill itself: their rcptto calls
      // would show in the mirrors too, and the test must signal the worker running the crashing call.
      const during = traffic();
      await c.waitFor('ordinary messages served', () => during.acked.length >= 5);
      await during.stop();
      acked.push(...during.acked);
      stuck += during.stuck;
      const victim = await greeted(c);
      assert.equal((await victim.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
      victim.write('RCPT TO:<crash@example.test>');
      process.kill(await workerRunningRcptto(c), 'SIGSEGV');
      assert.ok(await victim.waitClosed(60_000), `crash ${i}: the session on the dead worker ends`);
      victim.destroy();
      await c.waitFor(`crash ${i} counted`, async () => (await restarts(c)) >= base + i);
    }
    const status = await c.waitFor('the fence in cluster.json', async () => (await c.cluster()).fences.length > 0 && (await c.cluster()));
    assert.deepEqual(status.fences.map((f) => [f.hook, f.file]), [['rcptto', join(c.dir, 'scripts', 'rcptto.js')]]);
    assert.equal(c.logs.filter((l) => l.level === 50 && /died \(signal SIGSEGV\) while running rcptto/.test(String(l.msg))).length, CRASHES_TO_FENCE,
      'each death is logged with the script it is blamed on');
    assert.ok(c.logs.some((l) => l.level === 50 && /^fenced rcptto script/.test(String(l.msg))), 'the fence is logged at error level');
    // Exit 5 while a worker is still being replaced (the status is printed all the same).
    const out = await promisify(execFile)(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')])
      .catch((e: { code?: number; stdout: string }) => { assert.equal(e.code, 5, e.stdout); return e; });
    assert.equal((JSON.parse(out.stdout) as { cluster: { fences: unknown[] } }).cluster.fences.length, 1);

    // Fenced: the hook answers 451 4.3.0 at once on every worker, for every recipient (the whole script is
    // off until its file changes), without running it; no process dies, the rest of the session goes on.
    await c.waitFor('both workers ready', async () => (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length === 2);
    const before = await restarts(c);
    for (let i = 0; i < 4; i++) {
      const client = await greeted(c);
      assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
      assert.match((await client.command(`RCPT TO:<${i % 2 ? 'crash' : 'ordinary'}@example.test>`, 30_000)).text, /^451 4\.3\.0/);
      assert.equal((await client.command('RSET', 30_000)).code, 250);
      await client.quit();
    }
    assert.equal(await restarts(c), before);
    const spool = await spooled(c);
    const lost = acked.filter((id) => !spool.has(id));
    assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged messages lost`);
    assert.equal(stuck, 0, 'every connection got a greeting or was closed');
  } finally {
    await c.stop();
    shared = undefined;
  }
});

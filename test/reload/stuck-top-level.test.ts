// A top level stuck in a builtin V8 cannot interrupt, saved over a running script under `postern serve`: the
// reload is refused naming the file, and the running generation serves on — also once isolated-vm gives up on
// the parked thread (seconds later), which used to empty every process that had tried the load; their
// replacements loaded the same file from disk, died in it, and the port answered no one until the file was fixed.
// A process that has to start with such a file on disk (the worker killed meanwhile) blames it, so that the
// supervisor fences it after a few starts: the worker then serves, the fenced hook answering 451 4.3.0.
// One server for both tests: the out-of-memory one first (it replaces nothing), then the stuck one, which kills the worker.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, workerPid, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';
import { mailFromReply, verdictScript } from './helpers.ts';

const STUCK = '// the line the error names is the top level\'s first\nconst sizes = [];\nconst n = Array(2 ** 32 - 1).lastIndexOf(1);\nexport default (ctx) => reject("stuck", { code: 550 });\n';

let c: ClusterProcess;
let script: string;
before(async () => {
  c = await startCluster({ config: ONE_WORKER, scripts: { 'mailfrom.js': verdictScript('v1') }, scriptLimits: 'product' });
  script = join(c.dir, 'scripts', 'mailfrom.js');
  await workerPid(c, 0);
});
after(async () => { await c.stop(); });

/** The first log line, from index `from` on, whose message matches `pattern`. */
const logAfter = (from: number, pattern: RegExp) => () => c.logs.slice(from).find((l) => pattern.test(String(l.msg)));

test('a reload whose top level makes V8 run out of memory in a builtin (the thread sleeps for good at once, before the load is given up on) keeps the running generation too', { timeout: 120_000 }, async () => {
  await writeFile(script, 'const sorted = Array.prototype.sort.call({ length: 2 ** 32 - 1 });\nexport default (ctx) => reject("oom", { code: 550 });\n');
  const refused = await c.waitFor('the reload refused', async () => (await c.cluster()).reload.lastError);
  assert.match(refused.join('\n'), /mailfrom\.js:1:1: top level did not finish/);
  const worker = await c.waitFor('the worker decides', logAfter(0, /^worker 0 (serves on|is being replaced)/), 60_000);
  assert.match(String(worker.msg), /^worker 0 serves on/);
  // The queue process's too, before the next test looks for what it says of its own load.
  const queue = await c.waitFor('the queue process decides', logAfter(0, /^queue 0 (serves on|is being replaced)/), 60_000);
  assert.match(String(queue.msg), /^queue 0 serves on/);
  assert.match(await mailFromReply(c.port('in')), /^550 5\.7\.1 v1/);
  assert.equal((await c.cluster()).processes.find((p) => p.role === 'worker')!.restarts, 0);
});

test('a reload whose top level cannot be stopped keeps the running generation in every process, also after isolated-vm gives up on the thread; a start with it on disk fences it', { timeout: 240_000 }, async () => {
  const at = (l: Record<string, unknown>): string => `${String(l.msg)} ${JSON.stringify(l.scripts ?? '')}`;
  assert.match(await mailFromReply(c.port('in')), /^550 5\.7\.1 v1/);
  const from = c.logs.length;

  // The first test's refusal reads the same (and is not logged again): this one is told by what each process refused.
  const refusedBefore = Object.values((await c.cluster()).reload.processes).map((p) => p.refused);
  await writeFile(script, STUCK);
  const refused = await c.waitFor('the reload refused', async () => {
    const { reload } = await c.cluster();
    return Object.values(reload.processes).every((p) => p.refused && !refusedBefore.includes(p.refused)) && reload.lastError;
  });
  assert.match(refused.join('\n'), /mailfrom\.js:1:1: top level did not finish within 1000 ms and could not be stopped/);
  assert.match(await mailFromReply(c.port('in')), /^550 5\.7\.1 v1/, 'the running generation answers');

  // isolated-vm gives up on the parked thread 5 s past its limit, in the worker and in the queue process.
  const outcome = (role: string) => logAfter(from, new RegExp(`^${role} 0 (serves on|is being replaced)`));
  const worker = await c.waitFor('the worker hears the thread is lost', outcome('worker'), 60_000);
  const queue = await c.waitFor('the queue process hears it', outcome('queue'), 60_000);
  assert.match(at(worker), /^worker 0 serves on .*mailfrom\.js/, 'the worker is not emptied for a refused load');
  assert.match(at(queue), /^queue 0 serves on/, 'nor is the queue process');
  assert.match(await mailFromReply(c.port('in')), /^550 5\.7\.1 v1/, 'still the running generation');
  assert.deepEqual((await c.cluster()).processes.map((p) => p.restarts), [0, 0], 'no process was replaced');
  assert.ok(!c.logs.some((l) => /being replaced|process died/.test(String(l.msg))), 'nothing was replaced');

  // The worker killed now: its replacement must load the file on disk, cannot, and blames it each time.
  process.kill(await workerPid(c, 0), 'SIGKILL');
  const fence = await c.waitFor('the stuck script fenced', async () => (await c.cluster()).fences[0], 180_000);
  assert.equal(fence.hook, 'mailfrom');
  assert.equal(fence.file, script);
  await workerPid(c, 0);
  assert.match(await mailFromReply(c.port('in')), /^451 4\.3\.0/, 'the fenced hook fails closed; the worker serves');

  await writeFile(script, verdictScript('v3'));
  // Lifted only once every process runs a generation built from the changed file (read in cluster.json, not by a
  // session every 25 ms through the 2 s the supervisor lets a shrunk file settle).
  await c.waitFor('the fence lifted', async () => (await c.cluster()).fences.length === 0);
  await c.waitFor('the fix in force', async () => /^550 5\.7\.1 v3/.test(await mailFromReply(c.port('in'))));
});

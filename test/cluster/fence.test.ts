// A script that hangs its worker again and again is fenced: its hook answers 451 4.3.0 without running,
// the fence is logged and shown in `postern status`, and it is lifted once the file changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess, ONE_WORKER } from '../helpers/cluster.ts';
import { CRASHES_TO_FENCE } from '../../engine/cluster/process-model.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const HANG_SCRIPT = "export default function (ctx) { if (ctx.address.localPart === 'hang') return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1)); }\n";

async function rcpt(c: ClusterProcess, address: string): Promise<{ code: number; text: string } | 'closed'> {
  const client = await SmtpTestClient.connect(c.port('in'));
  try {
    assert.equal((await client.read(30_000)).code, 220);
    await client.command('EHLO client.test', 30_000);
    await client.command('MAIL FROM:<a@example.test>', 30_000);
    return await client.command(`RCPT TO:<${address}>`, 60_000);
  } catch {
    return 'closed';
  } finally {
    client.destroy();
  }
}

async function readyWorkers(c: ClusterProcess): Promise<number> {
  return (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length;
}

// One server for the fence kept across a refused edit and lifted by one every process loads (a test of its own before,
// with a server and three hangs of its own: 12-20 s of the file's time for the same fence).
// One worker: a fence is the supervisor's and reaches every worker alike, and with \`workerChoice: fill\` a second one
// only idled. A 1 s limit, not the tests' 10 s: a hang V8 stops at the fast path's budget runs again on an isolate
// thread until that deadline and 5 s more (unrecoverable.ts), spinning a core; no call here must run long.
test('a script that hangs its worker repeatedly is fenced until its file changes into one every process loads (an edit whose reload is refused keeps it), also when the fence list cannot be written', async () => {
  const c = await startCluster({
    config: `${ONE_WORKER}sandbox: { timeoutMs: 1000 }\n`,
    scripts: { 'rcptto.js': HANG_SCRIPT },
  });
  try {
    // A directory where the fence list goes: writing it fails, as on a full disk. The
    // supervisor must neither die nor stop replacing workers; the fence holds in memory.
    await mkdir(join(c.dir, 'data', 'fences', 'fenced.json'), { recursive: true });
    for (let i = 1; i <= CRASHES_TO_FENCE; i++) {
      await c.waitFor('the worker ready', async () => (await readyWorkers(c)) === 1);
      // On the event-loop thread the hang kills the worker and the session with it; on an isolate thread
      // (the hook was moved off the fast path after a call that held the loop but came back) the call gets
      // 451 at its deadline and the worker is replaced seconds later. Either way it counts, never a 250.
      const r = await rcpt(c, 'hang@example.test');
      if (r !== 'closed') assert.match(r.text, /^451 4\.3\.0/, `hang ${i} fails closed`);
      await c.waitFor(`crash ${i} counted`, async () => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0) >= i);
    }
    const status = await c.waitFor('the fence in cluster.json', async () => (await c.cluster()).fences.length > 0 && (await c.cluster()));
    assert.equal(status.fences[0]!.hook, 'rcptto');
    assert.equal(status.fences[0]!.file, join(c.dir, 'scripts', 'rcptto.js'));
    assert.ok(c.logs.some((l) => l.level === 50 && /^fenced rcptto script/.test(String(l.msg))), 'the fence is logged at error level');
    assert.ok(c.logs.some((l) => l.level === 50 && /^the fence list could not be written/.test(String(l.msg))), 'the failed write is logged');
    // Exit 5 while a worker is still being replaced (the status is printed all the same).
    const out = await promisify(execFile)(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')])
      .catch((e: { code?: number; stdout: string }) => { assert.equal(e.code, 5, e.stdout); return e; });
    assert.equal((JSON.parse(out.stdout) as { cluster: { fences: unknown[] } }).cluster.fences.length, 1);

    // Fenced: answered at once with 451 4.3.0, no process dies.
    await c.waitFor('the worker ready', async () => (await readyWorkers(c)) === 1);
    const restarts = (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);
    for (let i = 0; i < 4; i++) {
      const r = await rcpt(c, 'hang@example.test');
      assert.notEqual(r, 'closed');
      assert.match((r as { text: string }).text, /^451 4\.3\.0/);
    }
    assert.equal((await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0), restarts);

    // A hurried fix with a syntax error: every process refuses it and serves on with the source that hangs.
    await writeFile(join(c.dir, 'scripts', 'rcptto.js'), 'export default function ( {\n');
    await c.waitFor('the edit refused', async () => (await c.cluster()).reload.lastError !== null);
    // Before: the file had changed, so the fence was lifted at its next check, and the next call hung the worker again.
    const verdict = await c.waitFor('the fence checked', () => c.logs.find((l) => /^fence (kept|lifted)/.test(String(l.msg))));
    assert.match(String(verdict.msg), /^fence kept: .*rcptto\.js changed, but not every process runs a generation built from it yet/);
    assert.equal((await c.cluster()).fences.length, 1);
    const beforeRefused = (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);
    const stillFenced = await rcpt(c, 'hang@example.test');
    assert.notEqual(stillFenced, 'closed');
    assert.match((stillFenced as { text: string }).text, /^451 4\.3\.0/, 'still fenced: answered without running');
    assert.equal((await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0), beforeRefused);

    // A changed file that loads everywhere lifts the fence.
    await writeFile(join(c.dir, 'scripts', 'rcptto.js'), "export default function () { return accept(); }\n");
    await c.waitFor('the fence lifted', async () => (await c.cluster()).fences.length === 0);
    assert.ok(c.logs.some((l) => /^fence lifted/.test(String(l.msg))));
    await c.waitFor('the new script in force', async () => {
      const r = await rcpt(c, 'hang@example.test');
      return r !== 'closed' && r.code === 250;
    });
  } finally {
    await c.stop();
  }
});

// One worker: each hang costs the worker it ran on; a second one only idled.
test('a script that hangs on isolate threads (no fast path) gets 451 at its deadline each time, and is fenced all the same: each hang costs its worker', async () => {
  const c = await startCluster({
    config: `${ONE_WORKER}sandbox: { fastPathMs: 0, timeoutMs: 300 }\n`,
    scripts: { 'rcptto.js': HANG_SCRIPT },
  });
  try {
    for (let i = 1; i <= CRASHES_TO_FENCE; i++) {
      await c.waitFor('the worker ready', async () => (await readyWorkers(c)) === 1);
      const r = await rcpt(c, 'hang@example.test');
      assert.notEqual(r, 'closed', `hang ${i}: the deadline answers, the session is not lost`);
      assert.match((r as { text: string }).text, /^451 4\.3\.0/, `hang ${i} fails closed`);
      await c.waitFor(`worker replaced after hang ${i}`, async () => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0) >= i);
    }
    const status = await c.waitFor('the fence in cluster.json', async () => (await c.cluster()).fences.length > 0 && (await c.cluster()));
    assert.equal(status.fences[0]!.hook, 'rcptto');
    assert.ok(c.logs.some((l) => /being replaced: its sandbox cannot recover/.test(String(l.msg)) && Array.isArray(l.scripts) && (l.scripts as unknown[]).length === 1),
      'the replacement is logged naming the script');
    // Fenced: answered at once, no worker lost any more.
    await c.waitFor('the worker ready', async () => (await readyWorkers(c)) === 1);
    const restarts = (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);
    const r = await rcpt(c, 'hang@example.test');
    assert.match((r as { text: string }).text, /^451 4\.3\.0/);
    assert.equal((await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0), restarts);
  } finally {
    await c.stop();
  }
});

test('a hang is blamed on the call that hung, not on another hook\'s call batched with it: the culprit is fenced after 3, the bystander never', async () => {
  const c = await startCluster({
    config: ONE_WORKER,
    scripts: { 'helo.js': 'export default function () {}\n', 'rcptto.js': HANG_SCRIPT },
  });
  try {
    // Each incident is blamed by one line: the watchdog's "hung in …", or, when the process died first (the builtin
    // ends in SIGSEGV) or the supervisor killed it before its watchdog ran (a loaded machine), the supervisor's
    // "died (…) while running …" from the running-call mirror; or, when V8 did stop the search at the fast path's
    // budget (it checks for interrupts at some points of it, not at others) and the call ran again on an isolate
    // thread until its deadline, the supervisor's "being replaced: its sandbox cannot recover" (seen in CI).
    const hangs = () => c.logs.filter((l) => /hung in|\) while running |being replaced: its sandbox cannot recover/.test(String(l.msg)));
    for (let i = 1; i <= CRASHES_TO_FENCE; i++) {
      await c.waitFor('the worker ready', async () => (await readyWorkers(c)) === 1);
      const culprit = await SmtpTestClient.connect(c.port('in'));
      await culprit.read(30_000);
      await culprit.command('EHLO a', 30_000);
      await culprit.command('MAIL FROM:<a@example.test>', 30_000);
      const bystanders = await Promise.all([0, 1, 2].map(async () => {
        const b = await SmtpTestClient.connect(c.port('in'));
        await b.read(30_000);
        return b;
      }));
      // Written together: the worker reads them in one turn of its event loop, and runs the calls as one batch.
      // Their sessions die with the worker: the rejections are expected, and handled from the start.
      const replies = [culprit.command('RCPT TO:<hang@example.test>', 60_000), ...bystanders.map((b) => b.command('EHLO b', 60_000))]
        .map((p) => p.catch(() => null));
      await c.waitFor(`hang ${i} logged`, () => hangs().length >= i);
      await Promise.all(replies);
      for (const client of [culprit, ...bystanders]) client.destroy();
    }
    for (const l of hangs()) {
      assert.deepEqual((l.scripts as Array<{ hook: string }>).map((s) => s.hook), ['rcptto'], `only the call that hung is named: ${String(l.msg)}`);
      assert.match(String(l.msg), /^worker 0 (hung in|died \([^)]*\) while running|is being replaced: its sandbox cannot recover)/);
    }
    const status = await c.waitFor('the culprit fenced', async () => (await c.cluster()).fences.length > 0 && (await c.cluster()));
    assert.deepEqual(status.fences.map((f) => f.hook), ['rcptto']);
  } finally {
    await c.stop();
  }
});

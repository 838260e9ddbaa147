// A process that dies while loading a script (its top level or compilation crashing in a builtin) is blamed on
// that script, as a death during a call is: the loader names it in the running-call mirror before it enters the
// isolate. After repeated deaths the script is fenced — logged, shown in `postern status` — and replacement
// workers do not run its top level again (its hook answers 451 4.3.0) instead of crash-looping; a changed file
// lifts the fence. Stand-in for the crash: SIGSEGV to a process whose mirror says it is loading the script,
// whose top level blocks in a builtin V8 does not interrupt (so the test has time to see it there).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, type ClusterProcess, TWO_WORKERS } from '../helpers/cluster.ts';
import { readMirror } from '../../engine/sandbox/index.ts';
import { CRASHES_TO_FENCE } from '../../engine/cluster/process-model.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const GOOD = 'export default function () { return accept(); }\n';
const BLOCKING_TOP_LEVEL = "const n = Array(2 ** 32 - 1).lastIndexOf(1);\nexport default function () { return reject('never ' + n); }\n";

async function rcpt(c: ClusterProcess): Promise<{ code: number; text: string } | 'closed'> {
  const client = await SmtpTestClient.connect(c.port('in'));
  try {
    assert.equal((await client.read(30_000)).code, 220);
    await client.command('EHLO client.test', 30_000);
    await client.command('MAIL FROM:<a@example.test>', 30_000);
    return await client.command('RCPT TO:<x@example.test>', 60_000);
  } catch {
    return 'closed';
  } finally {
    client.destroy();
  }
}

const readyWorkers = async (c: ClusterProcess): Promise<number> => (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length;
const restarts = async (c: ClusterProcess): Promise<number> => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);

test('a worker dying while it loads a script is blamed on the script; repeated, the script is fenced and not loaded again', async () => {
  const c = await startCluster({ config: TWO_WORKERS, scripts: { 'rcptto.js': GOOD } });
  try {
    await c.waitFor('both workers ready', async () => (await readyWorkers(c)) === 2);
    assert.equal((await rcpt(c)) !== 'closed' && (await rcpt(c) as { code: number }).code, 250);

    // The reload makes every process load the new top level; each one seen loading it (its mirror names
    // the script) dies, and so does each replacement, until the supervisor fences the script.
    await writeFile(join(c.dir, 'scripts', 'rcptto.js'), BLOCKING_TOP_LEVEL);
    const fences = join(c.dataDir, 'fences');
    const killed = new Set<number>();
    const status = await c.waitFor('the fence', async () => {
      const s = await c.cluster();
      if (s.fences.length) return s;
      for (const name of await readdir(fences)) {
        const pid = Number(/^running-(\d+)\.bin$/.exec(name)?.[1]);
        if (!pid || killed.has(pid)) continue;
        if (!readMirror(join(fences, `running-${pid}`)).some((r) => r.hook === 'rcptto')) continue;
        killed.add(pid);
        try { process.kill(pid, 'SIGSEGV'); } catch { /* gone already */ }
      }
      return null;
    }, 120_000);
    assert.ok(killed.size >= CRASHES_TO_FENCE, `${killed.size} deaths while loading`);
    assert.equal(status.fences.length, 1);
    assert.equal(status.fences[0]!.hook, 'rcptto');
    assert.equal(status.fences[0]!.file, join(c.dir, 'scripts', 'rcptto.js'));
    assert.ok(c.logs.some((l) => l.level === 50 && /died \(signal SIGSEGV\) while running rcptto/.test(String(l.msg))), 'each death names the script');
    assert.ok(c.logs.some((l) => l.level === 50 && /^fenced rcptto script/.test(String(l.msg))), 'the fence is logged at error level');
    // Exit 5 while a worker is still being replaced (the status is printed all the same).
    const out = await promisify(execFile)(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')])
      .catch((e: { code?: number; stdout: string }) => { assert.equal(e.code, 5, e.stdout); return e; });
    assert.equal((JSON.parse(out.stdout) as { cluster: { fences: Array<{ file: string }> } }).cluster.fences[0]?.file, join(c.dir, 'scripts', 'rcptto.js'));

    // Replacements start without running the fenced top level: both ready, the hook answers 451 4.3.0, nobody dies.
    await c.waitFor('both workers ready with the script fenced', async () => (await readyWorkers(c)) === 2, 60_000);
    const before = await restarts(c);
    for (let i = 0; i < 4; i++) {
      const r = await rcpt(c);
      assert.notEqual(r, 'closed');
      assert.match((r as { text: string }).text, /^451 4\.3\.0/);
    }
    assert.equal(await restarts(c), before, 'no crash loop');

    // A changed file lifts the fence, and the new script is in force.
    await writeFile(join(c.dir, 'scripts', 'rcptto.js'), GOOD);
    await c.waitFor('the fence lifted', async () => (await c.cluster()).fences.length === 0);
    await c.waitFor('the new script in force', async () => {
      const r = await rcpt(c);
      return r !== 'closed' && r.code === 250;
    });
  } finally {
    await c.stop();
  }
});

// SIGTERM while a reload is being built (a script whose top level computes for seconds: a heavy table built at load,
// a bad deploy followed by `systemctl stop`). The stop waited for the build before it told a single session: for as
// long as the build ran, sessions were served as if nothing had happened (their commands got 250, new transactions
// began), and the 5 s of grace began only after it — past the supervisor's 30 s the worker was killed, every open
// session cut without its 421. The sessions are now told at once, the build finishing beside the drain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, greeted } from '../helpers/cluster.ts';

// Computes for 5 s, well inside the top level's limit (max(1 s, sandbox.timeoutMs)), after a line that says it began:
// the SIGTERM comes as soon as the test reads that line, and the drain's line follows it with seconds to spare on a loaded
// machine. (10 s spun a core twice as long for the same order of the two lines.)
const SLOW_TOP_LEVEL = 'log("slow top level begins");\nconst end = Date.now() + 5_000; let n = 0; while (Date.now() < end) n++;\n' +
  'export default () => reject("v2", { code: 550 });\n';

test('SIGTERM during a reload\'s build: the drain begins at once (421 to the next command), not once the build ends; exit 0', { timeout: 120_000 }, async () => {
  const c = await startCluster({
    config: `workers: 1
sandbox: { isolates: 1, timeoutMs: 30000 }
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
    scripts: { 'mailfrom.ts': 'export default () => reject("v1", { code: 550 });\n' },
  });
  try {
    await c.waitFor('the worker and the queue process ready', async () => (await c.cluster()).processes.filter((p) => p.ready).length === 2);
    const session = await greeted(c);
    assert.equal((await session.command('MAIL FROM:<a@example.org>')).text, '550 5.7.1 v1');
    const workerPid = (await c.cluster()).processes.find((p) => p.role === 'worker')!.pid;
    const ofWorker = (l: Record<string, unknown>): boolean => l.pid === workerPid;
    await writeFile(join(c.dir, 'scripts', 'mailfrom.ts'), SLOW_TOP_LEVEL);
    c.proc.kill('SIGHUP');
    await c.waitFor('the worker building the new generation', () => c.logs.some((l) => ofWorker(l) && l.msg === 'slow top level begins'));

    const exited = new Promise<[number | null, string | null]>((r) => c.proc.once('exit', (code, signal) => r([code, signal])));
    c.proc.kill('SIGTERM');
    const drainOrBuilt = await c.waitFor('the worker draining, or its build done', () =>
      c.logs.find((l) => ofWorker(l) && (l.msg === 'stopping: sessions in progress may finish their transaction' || l.msg === 'reloaded')), 60_000);
    assert.equal(drainOrBuilt.msg, 'stopping: sessions in progress may finish their transaction', 'the sessions were told before the build under way ended');
    assert.equal((await session.command('NOOP')).text, '421 4.4.2 Server shutting down');
    assert.ok(await session.waitClosed());
    assert.deepEqual(await exited, [0, null], 'a clean stop');
    assert.ok(!c.logs.some((l) => /stopped answering|killing it/.test(String(l.msg))), 'no process killed');
  } finally {
    await c.stop();
  }
});

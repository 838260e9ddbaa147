/**
 * A stop (SIGTERM) while a reload is being built: the queue process waited for the build (seconds, up to its deadline)
 * before it stopped its queue runner, and for all that time started new deliveries as if no stop had come — a message
 * made due meanwhile (`postern queue retry`, a retry time reached) was sent during the stop, its attempt then racing
 * the supervisor's 30 s before SIGKILL (a kill between the next hop's 250 and the record sends it again). The runner
 * now stops starting attempts as the stop begins, the build finishing beside it; the message waits for the next start.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, deliveryToSink, greeted } from '../helpers/cluster.ts';
import { startSink } from '../helpers/sink.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { workerSpoolDir } from '../../engine/cluster/spool-set.ts';

// Computes for 10 s, well inside the top level's limit (max(1 s, sandbox.timeoutMs)), after a line that says it began.
const SLOW_TOP_LEVEL = 'log("slow top level begins");\nconst end = Date.now() + 10_000; let n = 0; while (Date.now() < end) n++;\n' +
  'export default () => accept();\n';

test('SIGTERM during a reload\'s build: the queue process starts no delivery after the stop began', { timeout: 120_000 }, async () => {
  let deferring = true;
  const sink = await startSink({ decide: (stage) => (stage === 'rcpt' && deferring ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const c = await startCluster({
    config: `workers: 1
sandbox: { isolates: 1, timeoutMs: 30000 }
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
${deliveryToSink(sink.port, { retrySchedule: [3600] })}`,
    scripts: { 'mailfrom.ts': 'export default () => accept();\n' },
  });
  try {
    await c.waitFor('the worker and the queue process ready', async () => (await c.cluster()).processes.filter((p) => p.ready).length === 2);
    const id = await submitMessage(c.port('in'), 'a@example.test', ['b@example.test']);
    await c.waitFor('its first attempt deferred and recorded', () => existsSync(join(workerSpoolDir(c.dataDir, 0), 'queue', `${id}.state`)));
    deferring = false;
    const processes = (await c.cluster()).processes;
    const queuePid = processes.find((p) => p.role === 'queue')!.pid;
    const workerPid = processes.find((p) => p.role === 'worker')!.pid;
    await writeFile(join(c.dir, 'scripts', 'mailfrom.ts'), SLOW_TOP_LEVEL);
    c.proc.kill('SIGHUP');
    await c.waitFor('the queue process building the new generation', () => c.logs.some((l) => l.pid === queuePid && l.msg === 'slow top level begins'));

    await greeted(c); // an open session: the worker says when it is told to stop
    const exited = new Promise<[number | null, string | null]>((r) => c.proc.once('exit', (code, signal) => r([code, signal])));
    c.proc.kill('SIGTERM');
    // The supervisor tells every child in one go: the worker saying it tells its session means the queue process has been told too.
    await c.waitFor('the stop under way', () => c.logs.some((l) => l.pid === workerPid && l.msg === 'stopping: sessions in progress may finish their transaction'));
    const retry = await runCli(['queue', 'retry', id, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(retry.code, 0, retry.stderr);
    const builtOrSent = await c.waitFor('the queue process\'s build done, or the message sent', () =>
      sink.messages.length > 0 || c.logs.find((l) => l.pid === queuePid && (l.msg === 'reloaded' || /reload refused/.test(String(l.msg)))), 60_000);
    assert.deepEqual(sink.messages.map((m) => m.to), [], `no delivery started after the stop began (${JSON.stringify(builtOrSent)})`);
    assert.deepEqual(await exited, [0, null], 'a clean stop');
    assert.deepEqual(sink.messages.map((m) => m.to), [], 'none at all');
  } finally {
    await c.stop();
    await sink.close();
  }
});

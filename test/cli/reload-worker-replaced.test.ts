// `postern reload` while a worker is replaced (killed as hung, recycled, crashed in its build): the worker told to
// reload never finishes it, and its replacement starts from the inputs as they are now, with the one check every new
// process makes at ready. The command told the processes apart by name and reload count alone: the replacement's count
// (1) was the dead one's (1, a server not reloaded since its start), so it waited for a reload nobody would make and
// ended with exit 4 "not finished within --timeout" (systemctl reload failed) for a reload every process had taken.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { startCluster, workerPid } from '../helpers/cluster.ts';

interface Counts { checks?: number }

test('postern reload: a worker replaced during the reload is not waited for (its replacement runs the inputs as they are)', async () => {
  const c = await startCluster({
    config: `
workers: 1
listeners:
  - { name: mx, listen: "127.0.0.1:{PORT:mx}", reverseDns: false }
`,
  });
  const config = join(c.dir, 'postern.yaml');
  try {
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    const counts = async (name: string): Promise<Counts | undefined> => (await c.cluster()).reload.processes[name] as Counts | undefined;
    await c.waitFor('each process has made its check at ready', async () => ((await counts('queue 0'))?.checks ?? 0) >= 1 && ((await counts('worker 0'))?.checks ?? 0) >= 1);
    const before = (await counts('queue 0'))!.checks!;
    const old = await workerPid(c, 0);
    // Held: it gets the reload in its channel and never reads it.
    process.kill(old, 'SIGSTOP');
    let command = 0;
    const reload = runCli(['reload', '--config', config, '--timeout', '20'], { timeoutMs: 90_000, onSpawn: (pid) => { command = pid; } });
    // The queue process took the SIGHUP: the command has its counts, and the worker has the reload unread.
    await c.waitFor('the queue process reloaded', async () => ((await counts('queue 0'))?.checks ?? 0) > before, 60_000);
    // The command held until the replacement has answered: else it may look while no worker 0 is known. On a loaded
    // machine the supervisor may have replaced the stopped worker already (held still past its limit) and the command
    // ended: the same case, come sooner (kill ESRCH was seen in a loaded fresh-clone run).
    const signal = (pid: number, sig: NodeJS.Signals): void => {
      try { process.kill(pid, sig); } catch (e) { if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e; }
    };
    assert.ok(command > 0, 'the command started');
    signal(command, 'SIGSTOP');
    signal(old, 'SIGKILL');
    await c.waitFor('a new worker ready and answered', async () => {
      const now = await c.cluster();
      const w = now.processes.find((p) => p.role === 'worker');
      return w?.ready && w.pid !== old && now.reload.processes['worker 0'] !== undefined;
    }, 60_000);
    signal(command, 'SIGCONT');
    const done = await reload;
    assert.equal(done.code, 0, done.stdout + done.stderr);
    assert.match(done.stdout, /^postern: reloaded \(generation \d+(, \d+)*\)\n$/);
  } finally {
    await c.stop();
  }
});

// systemd's default KillMode (control-group) and Ctrl-C at a terminal signal every process of `postern serve`
// at once, not only the supervisor: SIGTERM / SIGINT to the whole group still drain (a transaction in
// progress finishes and is spooled), the server exits 0, and no child is taken for a crash and replaced —
// also when the signal comes twice (bin/postern.js on an older Node forwards it as well, an administrator
// presses Ctrl-C again): the second one must not end a process in the middle of its stop.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, greeted, spooled, TWO_WORKERS } from '../helpers/cluster.ts';

for (const [signal, times] of [['SIGTERM', 1], ['SIGINT', 1], ['SIGTERM', 2], ['SIGINT', 2]] as const) {
  test(`${signal} to the whole process group${times === 2 ? ', twice' : ''}: the transaction in progress finishes, exit 0, no child replaced`, { timeout: 120_000 }, async () => {
    const cluster = await startCluster({ config: TWO_WORKERS.replace('workers: 2', 'workers: 1'), detached: true });
    try {
      await cluster.waitFor('the worker and the queue process ready', async () => (await cluster.cluster()).processes.filter((p) => p.ready).length === 2);
      const sending = await greeted(cluster);
      assert.equal((await sending.command('MAIL FROM:<a@example.org>')).code, 250);
      assert.equal((await sending.command('RCPT TO:<b@example.test>')).code, 250);
      assert.equal((await sending.command('DATA')).code, 354);
      sending.write('Subject: drained\r\n\r\nfirst half');

      const exited = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
      process.kill(-cluster.proc.pid!, signal);
      await cluster.waitFor('the worker to start draining', () => cluster.logs.find((l) => l.msg === 'stopping: sessions in progress may finish their transaction'));
      if (times === 2) {
        await cluster.waitFor('the supervisor to start its stop', () => cluster.logs.find((l) => l.msg === 'shutting down'));
        process.kill(-cluster.proc.pid!, signal); // every process has run its handler of the first one
      }
      sending.write('second half\r\n.');
      const queued = await sending.read();
      assert.equal(queued.code, 250, 'the transaction in progress finished');
      const id = /queued as (\S+)/.exec(queued.text)![1]!;
      // After a single signal the client leaves, as most do, and the stop ends with its session. After two it stays
      // silent: the stop then runs on through the listener's grace time (5 s), closing it with 421, while the second
      // signal has come, which is what the twice cases guard. (Every case waited the grace out: 20 s of the file's 30.)
      if (times === 1) await sending.quit();
      assert.equal(await exited, 0);
      assert.ok((await spooled(cluster)).has(id));
      const replaced = cluster.logs.filter((l) => /replacing it|could not start/.test(String(l.msg)));
      assert.deepEqual(replaced.map((l) => l.msg), [], 'no child is taken for a crash');
      assert.deepEqual(cluster.logs.filter((l) => Number(l.level) >= 50).map((l) => l.msg), [], 'no error logged');
    } finally {
      await cluster.stop();
    }
  });
}

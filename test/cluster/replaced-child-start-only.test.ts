// A worker replaced (it crashed) while an edit of a start-only key waits for a restart starts with what the
// server runs, not with the file: before, it read dataDir from the file and spooled where the queue process
// never looks (acknowledged mail stranded until a restart), and counted in a store the others did not use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, greeted, deliveryToSink, workerPid, TWO_WORKERS, ROUND_ROBIN } from '../helpers/cluster.ts';
import { startSink } from '../helpers/sink.ts';

test('a worker replaced while a dataDir change waits for a restart spools where the queue process delivers from', { timeout: 180_000 }, async () => {
  const sink = await startSink();
  const c = await startCluster({ config: TWO_WORKERS + ROUND_ROBIN + deliveryToSink(sink.port) });
  const file = join(c.dir, 'postern.yaml');
  const moved = join(c.dir, 'moved-data');
  try {
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    await writeFile(file, (await readFile(file, 'utf8')).replace(/^dataDir: .*$/m, `dataDir: ${JSON.stringify(moved)}`));
    await c.waitFor('the restart named', () => c.logs.some((l) => /needs a restart: dataDir/.test(String(l.msg))));
    const pid = await workerPid(c, 0);
    process.kill(pid, 'SIGKILL');
    await c.waitFor('worker 0 replaced', async () => (await c.cluster()).processes.some((p) => p.role === 'worker' && p.index === 0 && p.restarts > 0 && p.ready));
    // Round robin: of four connections at once, two reach the replacement.
    const clients = await Promise.all(Array.from({ length: 4 }, () => greeted(c)));
    const replies = await Promise.all(clients.map((s, i) => s.sendMail('a@example.net', [`user${i}@example.test`], `Subject: ${i}\r\n\r\nbody\r\n`)));
    for (const s of clients) s.destroy();
    assert.deepEqual(replies.map((r) => r.code), [250, 250, 250, 250]);
    const got = await sink.waitFor(4, 60_000);
    assert.deepEqual(got.flatMap((m) => m.to).sort(), ['user0@example.test', 'user1@example.test', 'user2@example.test', 'user3@example.test']);
    assert.equal(existsSync(moved), false, 'nothing is written to the new data directory before a restart');
  } finally {
    await c.stop();
    await sink.close();
  }
});

/**
 * A folder above the data directory renamed while the server runs (a mistaken `mv`, a volume re-organised): the
 * journal segment a worker had open moved with it and still had a name, so the worker went on answering 250 for
 * messages it wrote there, where the queue process, which reads the spool at its configured path, never looked:
 * acknowledged and never delivered. A flush now checks that its segment is still the file at the segment's path;
 * the records go to a new segment there (the folders are made again) and are delivered.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';

const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.subarray(0, 1000).toString())?.[1];

test('the data directory\'s parent renamed while the server runs: every 250 after it is delivered', { timeout: 180_000 }, async () => {
  const sink = await startSink({});
  const parent = mkdtempSync(join(tmpdir(), 'postern-moved-'));
  const c = await startCluster({ dataDir: join(parent, 'data'), config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}` });
  try {
    const client = await greeted(c);
    const send = async (subject: string): Promise<void> => {
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: ${subject}\r\n\r\nx\r\n`);
      assert.equal(r.code, 250, `${subject}: ${r.text}`);
    };
    await send('before');
    await sink.waitFor(1, 60_000);
    renameSync(parent, `${parent}-moved`);
    for (const subject of ['after0', 'after1', 'after2']) await send(subject);
    await client.quit();
    await sink.waitFor(4, 90_000);
    assert.deepEqual(sink.messages.map((m) => subjectOf(m.data)).sort(), ['after0', 'after1', 'after2', 'before']);
  } finally {
    await c.stop();
    await sink.close();
    rmSync(`${parent}-moved`, { recursive: true, force: true });
    rmSync(parent, { recursive: true, force: true });
  }
});

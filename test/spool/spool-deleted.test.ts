/**
 * A worker's spool folder deleted while the server runs (`rm -rf` by mistake, a cleanup script): the worker
 * went on answering 250 for messages it wrote to a journal segment that no longer had a name, and which the
 * queue process could not find: acknowledged and never delivered, gone at the next start. A flush now checks
 * that its segment still has a name before the 250; the journal makes its folder again, with its key, and
 * the worker its other folders: mail is taken, delivered, and read back after a restart.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { greeted, spooled, startCluster, ONE_WORKER, type ClusterProcess, deliveryToSink } from '../helpers/cluster.ts';

const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.subarray(0, 1000).toString())?.[1];

test('a worker\'s spool folder deleted while it runs: every 250 after it is delivered, also after a restart', { timeout: 240_000 }, async () => {
  let holding = true;
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address === 'held@example.test' && holding ? { code: 451, text: 'not now' } : null) });
  const dataDir = join(mkdtempSync(join(tmpdir(), 'postern-spool-deleted-')), 'data');
  const config = `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}`;
  let c: ClusterProcess | null = await startCluster({ dataDir, config });
  try {
    const client = await greeted(c);
    const send = async (subject: string, to = 'b@example.test', size = 0): Promise<void> => {
      const body = ('x'.repeat(998) + '\r\n').repeat(size);
      const r = await client.sendMail('a@example.test', [to], `Subject: ${subject}\r\n\r\n${body}x\r\n`);
      assert.equal(r.code, 250, `${subject}: ${r.text}`);
    };
    await send('before');
    await sink.waitFor(1, 60_000);
    rmSync(join(dataDir, 'spool', 'worker-0'), { recursive: true });
    for (const subject of ['small0', 'small1', 'small2']) await send(subject);
    await sink.waitFor(4, 90_000);
    // The other folders are made again by the worker's next look at its spool; a large message needs them.
    const c1 = c;
    await c.waitFor('the spool folders made again', () => c1.logs.some((l) => /was deleted while the server ran; the spool's folders are made again/.test(String(l.msg))));
    await send('large', 'b@example.test', 1200);
    await send('held', 'held@example.test');
    await sink.waitFor(5, 90_000);
    await c.waitFor('the held message deferred', () => c1.logs.some((l) => l.status === 'deferred'));
    await client.quit();
    await c.stop();
    c = null;
    // What the remade journal holds reads back at the next start (its key was written again).
    holding = false;
    c = await startCluster({ dataDir, config });
    await sink.waitFor(6, 90_000);
    const c2 = c;
    await c.waitFor('nothing left in the spools', async () => (await spooled(c2)).size === 0, 90_000);
    assert.deepEqual(sink.messages.map((m) => subjectOf(m.data)).sort(), ['before', 'held', 'large', 'small0', 'small1', 'small2']);
  } finally {
    await c?.stop();
    await sink.close();
    rmSync(join(dataDir, '..'), { recursive: true, force: true });
  }
});

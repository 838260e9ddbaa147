/**
 * A disk that stops answering (a lost SAN or NFS path, a drive in endless retries): the journal's fdatasync never
 * returns. Every client then waited at its final dot with no reply for as long as the disk hung, and sessions piled
 * up. Now the records of a flush not confirmed within the journal's deadline are refused with 451 (listed as done,
 * so never delivered besides the copy the client sends again), as are messages that end while it still hangs; once
 * the disk answers, mail is taken again, and each acknowledged message is delivered once. The fault is injected at the
 * C library (test/helpers/disk-faults.c, preloaded); the clients, the queue process and the next hop are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSink, type Sink } from '../helpers/sink.ts';
import { greeted, spooled, startCluster, ONE_WORKER, type ClusterProcess, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import type { SmtpTestClient } from '../helpers/smtp-client.ts';

const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.toString())?.[1];

async function start(env: Record<string, string>, dataDir: string, sink: Sink): Promise<ClusterProcess> {
  return startCluster({ env, dataDir, config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}` });
}

/** A whole transaction, its reply to the final dot awaited far longer than the journal's deadline. */
async function send(client: SmtpTestClient, subject: string): Promise<number> {
  assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
  assert.equal((await client.command('RCPT TO:<b@example.test>')).code, 250);
  assert.equal((await client.command('DATA')).code, 354);
  for (const line of [`Subject: ${subject}`, '', 'x', '.']) client.write(line);
  return (await client.read(150_000)).code;
}

test('the journal\'s disk stops answering (fdatasync hangs): the waiting message gets 451, as do the next, instead of no reply; the disk back, mail is taken and each 250 delivered once', { timeout: 300_000 }, async () => {
  const faults = diskFaults();
  const dataDir = join(mkdtempSync(join(tmpdir(), 'postern-hung-disk-')), 'data');
  const sink = await startSink({});
  let c = await start(faults.env, dataDir, sink);
  try {
    const [first, second] = [await greeted(c), await greeted(c)];
    assert.equal(await send(first, 'warm'), 250);
    faults.arm('fdatasync-hang');
    assert.equal(await send(first, 'hung1'), 451, 'a reply, and a refusal: the disk did not confirm the message');
    assert.equal(await send(second, 'hung2'), 451, 'a message ending while the disk still hangs is refused too');
    assert.ok(c.logs.some((l) => l.msg === 'spooling failed' && /has not confirmed the spool journal's last write/.test(JSON.stringify(l))), 'said why, at error');
    faults.disarm('fdatasync-hang');
    assert.equal(await send(second, 'after'), 250, 'the disk answers again: mail is taken');
    await sink.waitFor(2, 90_000);
    for (const cl of [first, second]) await cl.quit();
    // A restart reads the journal anew: the refused records' bytes are there, listed as done, and stay undelivered.
    await c.stop();
    c = await start({}, dataDir, sink);
    await c.waitFor('the queue runner started', () => c.logs.some((l) => l.msg === 'queue runner started'));
    await c.waitFor('nothing left in the spools', async () => (await spooled(c)).size === 0, 90_000);
    assert.deepEqual(sink.messages.map((m) => subjectOf(m.data)).sort(), ['after', 'warm']);
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
    await sink.close();
  }
});

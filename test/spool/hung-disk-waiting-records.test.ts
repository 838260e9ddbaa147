/**
 * A disk that stops answering while a message's record waits for the next journal flush (the one under way hangs in
 * fdatasync): at the deadline both are refused with 451 and listed as done, and their clients send them again. The
 * waiting record's bytes, never written, stayed in the segment's queue of writes all the same: the next flush, once
 * the disk answered, wrote them into the segment and synced them, acknowledged (past the acked end, so the queue
 * process reads them). Only their done line, which is never synced, kept them from being delivered: a crash of the
 * machine before it reached the disk, or a reader that looked at a fresh segment's done list before the bytes were
 * there (a record ahead is judged by the byte at its read position), and the refused message was delivered besides the
 * copy its client sent again. Now a refused record not yet written is never written.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { greeted, startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { until } from '../helpers/wait.ts';
import type { SmtpTestClient } from '../helpers/smtp-client.ts';

async function send(client: SmtpTestClient, subject: string): Promise<number> {
  // While the flush hangs past its deadline a new transaction is refused at MAIL FROM (hung-disk-early-refusal.test.ts).
  const mail = await client.command('MAIL FROM:<a@example.test>');
  if (mail.code === 451) return mail.code;
  assert.equal(mail.code, 250);
  assert.equal((await client.command('RCPT TO:<b@example.test>')).code, 250);
  assert.equal((await client.command('DATA')).code, 354);
  for (const line of [`Subject: ${subject}`, '', 'x', '.']) client.write(line);
  return (await client.read(150_000)).code;
}

/** The bytes of every journal segment of the data folder. */
function segments(dataDir: string): string {
  return (readdirSync(dataDir, { recursive: true }) as string[]).filter((n) => n.endsWith('.seg')).map((n) => readFileSync(join(dataDir, n), 'latin1')).join('');
}

test('a record waiting behind a flush that hangs past the deadline is refused, and its bytes never reach the segment', { timeout: 300_000 }, async () => {
  const faults = diskFaults();
  const dataDir = join(mkdtempSync(join(tmpdir(), 'postern-hung-waiting-')), 'data');
  const sink = await startSink({});
  const c = await startCluster({ env: faults.env, dataDir, config: `${ONE_WORKER}spool: { syncDeadlineMs: 8000 }\n${deliveryToSink(sink.port, { retrySchedule: [1] })}` });
  try {
    const [first, second] = [await greeted(c), await greeted(c)];
    assert.equal(await send(first, 'warm'), 250);
    faults.armFor('fdatasync-hang', '.seg');
    const hung = send(first, 'hung-in-flush');
    await until('the flush hangs', () => faults.hungCalls('fdatasync-hang') >= 1, { timeoutMs: 60_000 });
    // Ends within the deadline (8 s away, spool.syncDeadlineMs above): it waits for the next flush, which cannot start before the hung one ends.
    const waiting = send(second, 'waiting-behind');
    assert.equal(await hung, 451);
    assert.equal(await waiting, 451);
    faults.disarm('fdatasync-hang');
    // Refused (451) until the server has seen the hung flush return: a moment after the disarm, later on a loaded machine.
    // Each try on a connection of its own: every refusal counts towards limits.maxErrors.
    let code: number;
    do {
      const client = await greeted(c);
      code = await send(client, 'after');
      await client.quit();
    } while (code === 451);
    assert.equal(code, 250, 'the disk answers again: mail is taken');
    await sink.waitFor(2, 90_000);
    for (const cl of [first, second]) await cl.quit();
    const bytes = segments(dataDir);
    assert.match(bytes, /Subject: after/);
    assert.doesNotMatch(bytes, /Subject: waiting-behind/, 'the refused record, never written before the deadline, was written by the next flush');
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
    await sink.close();
  }
});

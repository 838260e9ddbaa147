/**
 * Messages committed to the journal wait in memory for its flush (the one under way must end before the next starts),
 * and spool.receivingMemoryBytes stopped counting their bytes at the commit: while a flush took long (a slow or busy
 * disk, up to the sync deadline), every client that finished a message under 1 MiB added it to the journal's queue,
 * held in memory, and the next message saw nothing held and went to memory too: maxConnections × 1 MiB at once, the
 * bound the setting is for. Now they count until the journal has them durable (or refused): past the bound, messages
 * go to files of their own, whose syncs do not wait for the journal's, and are taken meanwhile.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { greeted, startCluster, ONE_WORKER } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { until } from '../helpers/wait.ts';
import type { SmtpTestClient } from '../helpers/smtp-client.ts';

const BUDGET = 2 * 1024 * 1024;
const CLIENTS = 40;
const BODY = `${'y'.repeat(998)}\r\n`.repeat(900); // 900 KB: under the journal's 1 MiB, a record each

async function startMessage(client: SmtpTestClient, subject: string): Promise<void> {
  assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
  assert.equal((await client.command('RCPT TO:<b@example.test>')).code, 250);
  assert.equal((await client.command('DATA')).code, 354);
  client.socket.write(`Subject: ${subject}\r\n\r\n${BODY}.\r\n`);
}

test('messages waiting for a slow journal flush count in spool.receivingMemoryBytes: past it, they go to files and are taken', { timeout: 300_000 }, async () => {
  const faults = diskFaults();
  // A deadline far off: the flush is slow, not failed; nothing is refused for it during the test.
  const c = await startCluster({ env: { POSTERN_SYNC_DEADLINE_MS: '600000', ...faults.env }, config: `${ONE_WORKER}spool: { receivingMemoryBytes: ${BUDGET} }\n` });
  const clients: SmtpTestClient[] = [];
  try {
    const first = await greeted(c);
    await startMessage(first, 'warm');
    assert.equal((await first.read(60_000)).code, 250);
    faults.armFor('fdatasync-hang', '.seg');
    await startMessage(first, 'in the slow flush');
    await until('the flush is under way', () => faults.hungCalls('fdatasync-hang') >= 1, { timeoutMs: 60_000 });
    const answers: Array<number | null> = [];
    for (let i = 0; i < CLIENTS; i++) {
      const client = await greeted(c);
      clients.push(client);
      answers.push(null);
      await startMessage(client, `client ${i}`);
      void client.read(300_000).then((r) => { answers[i] = r.code; }, () => undefined);
    }
    // A message not answered yet is a journal record waiting for the flush, in memory (the worker's RSS says little:
    // the bytes of the messages taken pass through it too, and wait for a collection). At most the bound's worth wait
    // (and the one that passed it); the rest are taken. Before, none was: all 40 (36 MB) waited with a 2 MiB bound.
    const inMemory = Math.ceil(BUDGET / BODY.length) + 1;
    await until('every message past the bound taken', () => answers.filter((a) => a === 250).length >= CLIENTS - inMemory, { timeoutMs: 120_000 });
    faults.disarm('fdatasync-hang');
    assert.equal((await first.read(60_000)).code, 250);
    await until('every message taken once the disk answers', () => answers.every((a) => a === 250), { timeoutMs: 120_000 });
  } finally {
    faults.disarm('fdatasync-hang');
    for (const client of clients) client.destroy();
    await c.stop();
  }
});

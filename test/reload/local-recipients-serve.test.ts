// The recipient table (localRecipients) under `postern serve`: every worker (round robin) takes a table renamed
// over it, and an emptied one is refused by every process, whose running table keeps answering. The production
// mode, with its supervisor that watches the inputs and tells each process to reload.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ROUND_ROBIN, TWO_WORKERS, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

/** RCPT TO replies for `to` on four connections at once (round robin: both workers answer). */
async function rcpts(c: ClusterProcess, to: string): Promise<Set<string>> {
  const clients = await Promise.all(Array.from({ length: 4 }, () => SmtpTestClient.connect(c.port('in'))));
  const codes = await Promise.all(clients.map(async (s) => {
    await s.read(30_000);
    await s.command('EHLO client.test', 30_000);
    await s.command('MAIL FROM:<forged@innocent.example>', 30_000);
    return (await s.command(`RCPT TO:<${to}>`, 30_000)).text.slice(0, 9);
  }));
  for (const s of clients) s.destroy();
  return new Set(codes);
}

test('postern serve: a recipient table renamed over is in force on every worker; an emptied one is refused everywhere', { timeout: 120_000 }, async () => {
  const c = await startCluster({
    config: `${ROUND_ROBIN}${TWO_WORKERS}localRecipients: ./recipients\n`,
    files: { recipients: 'alice@example.test\n' },
  });
  try {
    const table = join(c.dir, 'recipients');
    const start = await c.waitFor('every process on the first table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 3 && r.converged && r;
    });
    assert.deepEqual(await rcpts(c, 'alice@example.test'), new Set(['250 2.1.5']));
    assert.deepEqual(await rcpts(c, 'newhire@example.test'), new Set(['550 5.1.1']));

    await writeFile(`${table}.new`, 'alice@example.test\nnewhire@example.test\n');
    await rename(`${table}.new`, table);
    await c.waitFor('the new table in force everywhere', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && Object.entries(r.processes).every(([name, p]) => p.generation !== start.processes[name]!.generation);
    });
    assert.deepEqual(await rcpts(c, 'newhire@example.test'), new Set(['250 2.1.5']));

    await writeFile(`${table}.new`, '# nothing here yet\n');
    await rename(`${table}.new`, table);
    const refused = await c.waitFor('the emptied table refused by every process', async () => {
      const r = (await c.cluster()).reload;
      return Object.values(r.processes).every((p) => p.refused) && r;
    });
    for (const p of Object.values(refused.processes)) assert.match(String(p.lastError), /recipients: localRecipients: lists no recipient/);
    assert.deepEqual(await rcpts(c, 'newhire@example.test'), new Set(['250 2.1.5']), 'the running table still answers');
    assert.deepEqual(await rcpts(c, 'nobody@example.test'), new Set(['550 5.1.1']));
  } finally {
    await c.stop();
  }
});

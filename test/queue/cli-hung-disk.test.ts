/**
 * `postern queue hold` on a disk that stops answering (the fdatasync of the hold file never returns). The hold is
 * refused at the spool's deadline and the command said so, and then never returned: Node's exit waits for every thread
 * of libuv's pool, the one in the hung sync too, so the administrator's shell (or a script running the command) hung
 * until the disk answered. Now the command ends once it has said its error, and it takes the configuration's
 * spool.syncDeadlineMs as the server does (it waited the built-in 30 s). The fault is injected at the C library
 * (test/helpers/disk-faults.c, fdatasync-hang, preloaded into the command only); the server and the command are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { greeted, startCluster, ONE_WORKER } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { runCli } from '../helpers/cli.ts';

test('postern queue hold on a hung disk: the refusal said, and the command ends while the disk still hangs', { timeout: 120_000 }, async () => {
  const faults = diskFaults();
  const c = await startCluster({ config: `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\n` });
  try {
    const client = await greeted(c);
    const sent = await client.sendMail('a@example.test', ['b@example.test'], 'Subject: x\r\n\r\nx\r\n');
    assert.equal(sent.code, 250);
    await client.quit();
    const id = /queued as (\S+)/.exec(sent.text)![1]!;
    faults.armFor('fdatasync-hang', '.tmp'); // the temporary file the hold is written through (spool.ts #writeBeside)
    // The guard (60 s) is far beyond the deadline: a command that waits for the disk is killed by it (code null).
    const r = await runCli(['queue', 'hold', id, '--config', join(c.dir, 'postern.yaml')], { env: faults.env, timeoutMs: 60_000 });
    assert.equal(faults.hungCalls('fdatasync-hang') >= 1, true, 'the hold\'s sync did hang');
    assert.match(r.stderr, /has not confirmed .*\.held.* for 5 s|has not confirmed the hold of message .* for 5 s/, r.stderr);
    assert.equal(r.code, 1, `ended on its own with its error (${r.signal ?? ''}): ${r.stderr}`);
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
  }
});

/**
 * While a spool sync hangs, a DATA of a transaction begun before gets 451 4.3.0 before its 354. A client that writes
 * its message without waiting for that reply (DATA, then the message in a second write: with Nagle's algorithm, a
 * second segment) had the message read after the DATA was answered: the check for a message sent behind a refused
 * DATA only looked at input already read with the DATA, so each line of the message ran as a command (a header line
 * a 500, an RSET, a MAIL FROM of the body: a transaction of its own once the disk answered again). The DATA refused
 * for the hang now closes the connection after its 451 whatever follows: the client sends the message again later,
 * as it would have anyway. The fault is injected at the C library (test/helpers/disk-faults.c, preloaded).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

const CONFIG = `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\n`;

test('a hung spool: a DATA refused before its 354 closes the connection, so a message written behind it in its own segment is never read as commands', { timeout: 300_000 }, async () => {
  const faults = diskFaults();
  const c = await startCluster({ env: faults.env, config: CONFIG });
  try {
    const first = await greeted(c);
    assert.equal((await first.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await first.command('RCPT TO:<b@example.test>')).code, 250);
    // A transaction begun before the hang: its DATA comes during it.
    const begun = await greeted(c);
    assert.equal((await begun.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await begun.command('RCPT TO:<b@example.test>')).code, 250);

    faults.armFor('fdatasync-hang', '.seg');
    assert.equal((await first.command('DATA')).code, 354);
    for (const line of ['Subject: hung', '', 'x']) first.write(line);
    assert.equal((await first.command('.', 150_000)).code, 451, 'the message waiting for the sync: refused at the deadline');

    // The reply to DATA read before the message goes out: the message is in a read of its own, after the DATA.
    const atData = await begun.command('DATA');
    assert.match(atData.text, /^451 4\.3\.0 .*cannot confirm/, begun.transcript.join('\n'));
    for (const line of ['Subject: sent without waiting', '', 'RSET', 'NOOP', 'MAIL FROM:<x@example.test>', '.']) begun.write(line);
    assert.equal(await begun.waitClosed(), true, `closed after the 451: ${begun.transcript.join('\n')}`);
    assert.deepEqual(begun.transcript.filter((l) => l.startsWith('S: ')).slice(-1), [`S: ${atData.text}`], 'no line of the message answered as a command');
    await first.quit();
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
  }
});

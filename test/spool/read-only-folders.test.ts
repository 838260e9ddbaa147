/**
 * A worker's spool folders made read-only while the server runs (a mistaken chmod, a filesystem remounted
 * read-only in part): a large message, which gets a file of its own, cannot be moved into queue/ and is
 * refused with 451; its file in incoming/ was left behind, once per try (a client trying again filled the
 * disk with copies nobody would read until a restart). Refused messages leave nothing now, and once the
 * folders are writable again mail is taken and delivered. The server runs as root without the capabilities
 * that bypass file permissions, as a service user would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { greeted, startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';

const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.subarray(0, 1000).toString())?.[1];

test('a read-only queue folder: large messages get 451 and leave no file behind; delivered once it is writable again', { timeout: 180_000 }, async () => {
  const sink = await startSink({});
  const c = await startCluster({
    config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}`,
    wrap: ['setpriv', '--bounding-set=-dac_override,-dac_read_search,-fowner'],
  });
  const spool = join(c.dataDir, 'spool', 'worker-0');
  try {
    const client = await greeted(c);
    const large = `${('x'.repeat(998) + '\r\n').repeat(1200)}x\r\n`;
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: before\r\n\r\nx\r\n')).code, 250);
    await sink.waitFor(1, 60_000);
    chmodSync(join(spool, 'queue'), 0o500);
    for (let i = 0; i < 3; i++) {
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: refused${i}\r\n\r\n${large}`);
      assert.equal(r.code, 451, r.text);
    }
    assert.deepEqual(readdirSync(join(spool, 'incoming')), [], 'nothing left in incoming/');
    // Small messages go to the journal, whose segment is open: taken and delivered meanwhile.
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: small\r\n\r\nx\r\n')).code, 250);
    chmodSync(join(spool, 'queue'), 0o700);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], `Subject: large\r\n\r\n${large}`)).code, 250);
    await sink.waitFor(3, 90_000);
    assert.deepEqual(sink.messages.map((m) => subjectOf(m.data)).sort(), ['before', 'large', 'small']);
    await client.quit();
  } finally {
    try { chmodSync(join(spool, 'queue'), 0o700); } catch { /* gone with the server's folder */ }
    await c.stop();
    await sink.close();
  }
});

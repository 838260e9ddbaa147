/**
 * The server run under a file size limit (RLIMIT_FSIZE: `ulimit -f`, limits.conf `fsize`, systemd `LimitFSIZE=`).
 * A write past it raises SIGXFSZ, which Node ignores: the write fails with EFBIG and no process dies. A journal
 * segment reaching the limit failed the messages being placed in it (451, sent again by the client) each time a
 * segment filled up; it is now full for this process and the next message goes to a new segment. A message
 * larger than the limit still gets 451, with a log line naming the limit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';

/** Below a worker's journal segment (4 MiB) and the spool's reserve. */
const LIMIT = 3_000_000;
const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.subarray(0, 1000).toString())?.[1];

test('under a file size limit journal segments end at it (every message taken); a message larger than it gets 451 with a log line naming the limit', { timeout: 180_000 }, async () => {
  const sink = await startSink({ size: 50_000_000 });
  const c = await startCluster({ config: `${ONE_WORKER}spool: { minFreeBytes: 0 }\n${deliveryToSink(sink.port, { retrySchedule: [1] })}`, wrap: ['prlimit', `--fsize=${LIMIT}`, '--'] });
  try {
    const client = await greeted(c);
    const body = (lines: number): string => `${'y'.repeat(78)}\r\n`.repeat(lines);
    // ~200 KB each: 40 of them cross the limit in two segments.
    const subjects: string[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: m${i}\r\n\r\n${body(2500)}`);
      assert.equal(r.code, 250, `m${i}: ${r.text}`);
      subjects.push(`m${i}`);
    }
    const big = await client.sendMail('a@example.test', ['b@example.test'], `Subject: big\r\n\r\n${body(50_000)}`);
    assert.match(big.text, /^451 4\.3\.0 /);
    await client.quit();
    await c.waitFor('the limit named', () => c.logs.some((l) => /larger than the file size limit of this process \(RLIMIT_FSIZE/.test(String(l.msg))));
    await sink.waitFor(40, 90_000);
    assert.deepEqual(sink.messages.map((m) => subjectOf(m.data)).sort(), subjects.sort());
    assert.ok((await c.cluster()).processes.every((p) => p.restarts === 0), 'no process died');
  } finally {
    await c.stop();
    await sink.close();
  }
});

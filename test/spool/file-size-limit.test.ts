/**
 * The server run under a file size limit (RLIMIT_FSIZE: `ulimit -f`, limits.conf `fsize`, systemd `LimitFSIZE=`).
 * A write past it raises SIGXFSZ, which Node ignores: the write fails with EFBIG and no process dies. A journal
 * segment reaching the limit failed the messages being placed in it (451, sent again by the client) each time a
 * segment filled up; it is now full for this process and the next message goes to a new segment. A message
 * larger than the limit still gets 451, with a log line naming the limit. The spool's reserve (4 MiB) cannot be made
 * under it, which the queue process tries at every scan: said once, not every few seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';

/** Below a worker's journal segment (4 MiB) and the spool's reserve. */
const LIMIT = 3_000_000;
const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.subarray(0, 1000).toString())?.[1];

test('under a file size limit journal segments end at it (every message taken); a message larger than it gets 451 with a log line naming the limit; the reserve that cannot be made is said once', { timeout: 180_000 }, async () => {
  let deferrals = 0;
  const sink = await startSink({ size: 50_000_000, decide: (stage, address) => (stage === 'rcpt' && address === 'later@example.test' && deferrals++ < 3 ? { code: 451, text: '4.3.0 later' } : null) });
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
    assert.equal((await client.sendMail('a@example.test', ['later@example.test'], 'Subject: later\r\n\r\nx\r\n')).code, 250);
    subjects.push('later');
    const big = await client.sendMail('a@example.test', ['b@example.test'], `Subject: big\r\n\r\n${body(50_000)}`);
    assert.match(big.text, /^451 4\.3\.0 /);
    await client.quit();
    await c.waitFor('the limit named', () => c.logs.some((l) => /larger than the file size limit of this process \(RLIMIT_FSIZE/.test(String(l.msg))));
    await sink.waitFor(41, 90_000);
    assert.deepEqual(sink.messages.map((m) => subjectOf(m.data)).sort(), subjects.sort());
    assert.ok((await c.cluster()).processes.every((p) => p.restarts === 0), 'no process died');
    // Three retries a second apart: the queue scanned (every 200 ms) many times meanwhile.
    const reserveLines = c.logs.filter((l) => /the reserve for the queue's bookkeeping could not be made/.test(String(l.msg)));
    assert.equal(reserveLines.length, 1, JSON.stringify(reserveLines));
    assert.match(String(reserveLines[0]!.err), /EFBIG/);
  } finally {
    await c.stop();
    await sink.close();
  }
});

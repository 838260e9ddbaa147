/**
 * An isolate whose rebuild failed is tried again a second later (sandbox.ts REBUILD_RETRY_MS). That second
 * was timed on the wall clock: a rebuild that failed while the clock ran a day ahead, corrected since (an NTP
 * step back), was not tried again for that day, and with every isolate broken each call of the hook failed
 * closed (451) all along, though the isolate would have built at once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ONE_WORKER, greeted } from '../helpers/cluster.ts';
import { needsFaketime, startSteppableCluster } from '../helpers/faketime.ts';
import { until } from '../helpers/wait.ts';

/** Its top level refuses to load while the clock is twelve hours or more ahead; `grow@` exhausts the isolate's memory. */
const script = (aheadAt: number): string => `if (Date.now() > ${aheadAt}) throw new Error('the clock is ahead');
const cache = [];
export default (ctx) => {
  if (ctx.address.address.startsWith('grow@')) for (;;) cache.push(new Array(250000).fill(1));
  return accept();
};
`;

test('the wall clock stepped back after an isolate failed to rebuild: it is tried again a second later, not a day', { skip: needsFaketime, timeout: 180_000 }, async () => {
  const s = await startSteppableCluster(`${ONE_WORKER}sandbox: { isolates: 1, memoryLimitMb: 16, timeoutMs: 30000, fastPathMs: 0 }\n`, {
    scripts: { 'rcptto.js': script(Date.now() + 12 * 3600_000) },
  });
  const rcpt = async (to: string): Promise<number> => {
    const client = await greeted(s.c);
    try {
      assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
      return (await client.command(`RCPT TO:<${to}>`, 30_000)).code;
    } finally {
      client.destroy();
    }
  };
  try {
    assert.equal(await rcpt('b@example.test'), 250);
    // A day ahead: the isolate lost to its memory limit cannot be built again.
    s.step('+86400');
    assert.equal(await rcpt('grow@example.test'), 451);
    await s.c.waitFor('the failed rebuild', () => s.c.logs.some((l) => /rebuilding isolate 0 failed/.test(String(l.msg))));
    // The clock put right: the isolate builds again, and the hook answers.
    s.step('+0');
    await until('the hook answering again', async () => (await rcpt('b@example.test')) === 250, { timeoutMs: 60_000, intervalMs: 500 });
  } finally {
    await s.close();
  }
});

// The limits `postern serve` test servers run scripts at (startCluster, test/helpers/cluster.ts), as the in-process
// startTestServer's (test/app/test-server-limits): some 150 test files start servers with startCluster, and at the
// product's 100 ms a call a loaded CI machine that held a worker's isolate thread back turned an accept into
// 451 4.3.0. A call that takes 300 ms of wall time stands for such a call here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ONE_WORKER, greeted, startCluster } from '../helpers/cluster.ts';
import { UNHURRIED_LIMITS } from '../helpers/unhurried-limits.ts';

const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';
/** Runs 300 ms by the clock, however much of it the thread gets: three times the product's limit. */
const SLOW_RCPTTO = 'export default function () { const end = Date.now() + 300; while (Date.now() < end); }';

async function rcptReply(config: string, scriptLimits?: 'product'): Promise<{ reply: string; written: string }> {
  const c = await startCluster({ config, scripts: { 'rcptto.ts': SLOW_RCPTTO }, scriptLimits });
  try {
    const client = await greeted(c);
    try {
      assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
      return { reply: (await client.command('RCPT TO:<b@example.test>')).text, written: await readFile(join(c.dir, 'postern.yaml'), 'utf8') };
    } finally { await client.quit(); }
  } finally { await c.stop(); }
}

test('a serve config that sets no limits: a call held up past 100 ms is still answered by its script; the limits follow the test\'s lines', { timeout: 120_000 }, async () => {
  const { reply, written } = await rcptReply(ONE_WORKER);
  assert.match(reply, /^250 /);
  assert.ok(written.endsWith(`${ONE_WORKER.replace('{PORT:in}', /listen: 127\.0\.0\.1:(\d+)/.exec(written)![1]!)}\nsandbox:\n  timeoutMs: ${UNHURRIED_LIMITS.sandboxTimeoutMs}\ndns:\n  timeoutMs: ${UNHURRIED_LIMITS.dnsTimeoutMs}\n`),
    `the test's lines, then the limits: ${written}`);
});

test('a serve config with its own sandbox.timeoutMs, or scriptLimits product, keeps its limit: the same call fails closed', { timeout: 120_000 }, async () => {
  assert.equal((await rcptReply(`${ONE_WORKER}sandbox: { timeoutMs: 100 }\n`)).reply, FAIL_CLOSED);
  assert.equal((await rcptReply(ONE_WORKER, 'product')).reply, FAIL_CLOSED);
});

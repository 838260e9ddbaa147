// The limits test servers run scripts at (test/helpers/postern.ts). At the product's 100 ms a call, a loaded CI
// machine that held a server's isolate thread back for 100 ms turned an accept into 451 4.3.0 and failed tests that
// time nothing out. A call that takes 300 ms of wall time stands for such a call here: a config without limits of its
// own lets it finish; a config with its own limit, or scriptLimits 'product', keeps the limit it asked for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import { PLAIN_MX_CONFIG, startTestServer, withUnhurriedLimits, type TestServerOptions } from '../helpers/postern.ts';
import { openTransaction } from '../helpers/smtp-client.ts';

const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';
/** Runs 300 ms by the clock, however much of it the thread gets: three times the product's limit. */
const SLOW_RCPTTO = 'export default function () { const end = Date.now() + 300; while (Date.now() < end); }';

async function rcptReply(opts: Omit<TestServerOptions, 'scripts'>): Promise<string> {
  const s = await startTestServer({ ...opts, scripts: { 'rcptto.ts': SLOW_RCPTTO } });
  try {
    const c = await openTransaction(s.port('mx'));
    try { return (await c.command('RCPT TO:<alice@example.com>')).text; } finally { await c.quit(); }
  } finally { await s.stop(); }
}

test('a config that sets no limits: a call held up past 100 ms is still answered by its script', async () => {
  assert.match(await rcptReply({ config: PLAIN_MX_CONFIG }), /^250 /);
});

test('a config with its own sandbox.timeoutMs, or scriptLimits product, keeps its limit: the same call fails closed', async () => {
  assert.equal(await rcptReply({ config: `${PLAIN_MX_CONFIG}sandbox: { timeoutMs: 100 }\n` }), FAIL_CLOSED);
  assert.equal(await rcptReply({ config: PLAIN_MX_CONFIG, scriptLimits: 'product' }), FAIL_CLOSED);
});

test('the limits are added after the test\'s lines (positions in config errors stay); a config with any limit of its own is left alone', async () => {
  const s = await startTestServer({ config: PLAIN_MX_CONFIG });
  try {
    const written = await readFile(join(s.dir, 'postern.yaml'), 'utf8');
    assert.ok(written.includes(PLAIN_MX_CONFIG), 'the test\'s config unchanged, lines and all');
    assert.deepEqual([s.config.config.sandbox.timeoutMs, s.config.config.dns.timeoutMs], [10_000, 80]);
  } finally { await s.stop(); }
  for (const own of ['sandbox: { isolates: 1 }\n', 'dns: { servers: ["127.0.0.1:53"] }\n', 'store: { redis: { url: "redis://127.0.0.1:1", timeoutMs: 30 } }\n', 'listeners: [\n']) {
    assert.equal(withUnhurriedLimits(PLAIN_MX_CONFIG + own), PLAIN_MX_CONFIG + own);
  }
  const redis = parseDocument(withUnhurriedLimits(`${PLAIN_MX_CONFIG}store: { redis: { url: "redis://127.0.0.1:1" } }\n`)).toJS();
  assert.deepEqual([redis.store.redis.timeoutMs, redis.sandbox.timeoutMs], [2000, 10_000]);
});

/**
 * Hooks awaiting a real Redis, over real SMTP: the code after `await rate()` runs when Redis answers, and
 * keeps a call's guarantees — a continuation that never ends fails closed (451) while other clients are
 * served, and what a continuation logs is told under its own connection.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, openTransaction } from '../helpers/smtp-client.ts';
import { needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { until } from '../helpers/wait.ts';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

const opts = needsRedis();
const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';

const RCPTTO = `export default async function (ctx) {
  const r = await rate('rcpt:' + ctx.address.localPart, 1000000, 3600);
  if (ctx.address.localPart === 'loop') while (true) {}
  log('after await', ctx.connection.id);
  if (!r.allowed) return defer('slow down');
}`;

let redis: TestRedis | undefined;
let server: TestServer | undefined;
before(async () => {
  if (opts.skip) return;
  redis = await startRedis();
  server = await startTestServer({
    config: `
localDomains: [example.com]
store:
  redis: { url: "${redis.url}", keyPrefix: "continuations:", timeoutMs: 1000 }
sandbox: { timeoutMs: 8000, isolates: 2 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`,
    scripts: { 'rcptto.ts': RCPTTO },
  });
});
after(async () => {
  await server?.stop();
  await redis?.stop();
});

const client = (): Promise<SmtpTestClient> => openTransaction(server!.port('mx'));

async function ordinary(local: string): Promise<string> {
  const c = await client();
  try {
    return (await c.command(`RCPT TO:<${local}@example.com>`)).text.slice(0, 3);
  } finally {
    await c.quit();
  }
}

test('a continuation that never ends after await rate() fails closed with 451; other clients are served meanwhile', opts, async () => {
  const looper = await client();
  let answered = false;
  const reply = looper.command('RCPT TO:<loop@example.com>').then((r) => { answered = true; return r.text; });
  // Its rate() has counted (its continuation runs next): the other clients' calls start after it, not in its
  // batch, so that they are served while it still runs (batch mates would run again from the start with it).
  await until('the looping call counted in Redis', async () =>
    (await run('redis-cli', ['-p', String(redis!.port), '--scan', '--pattern', '*rcpt:loop*'])).stdout.trim() !== '');
  // Served at once, while the looping call holds its isolate for its whole time limit (8 s: room on a loaded machine).
  const served = await Promise.all([0, 1, 2, 3].map((i) => ordinary(`user${i}`)));
  assert.deepEqual(served, ['250', '250', '250', '250']);
  assert.equal(answered, false, 'the looping call is still running while the others were served');
  assert.equal(await reply, FAIL_CLOSED);
  await looper.quit();
  // Right after (its isolate is replaced), mail flows as before.
  assert.equal(await ordinary('after'), '250');
});

test('log lines after await name their own connection, with several connections waiting at once', opts, async () => {
  const clients = await Promise.all([0, 1, 2, 3, 4].map(() => client()));
  const replies = await Promise.all(clients.map((c, i) => c.command(`RCPT TO:<many${i}@example.com>`)));
  assert.deepEqual(replies.map((r) => r.text.slice(0, 3)), ['250', '250', '250', '250', '250']);
  await Promise.all(clients.map((c) => c.quit()));
  const lines = server!.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('after await '));
  assert.ok(lines.length >= 5, `${lines.length} lines`);
  for (const line of lines) assert.equal(line.cid, String(line.msg).slice('after await '.length), JSON.stringify(line));
});

// Per-certificate and per-account sending limits counted in a real Redis (started by the test), with this
// folder's postern.yaml, mailfrom.ts and send_limits (alice's certificates get 2 messages an hour).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startExample, smtpClient, needs, run, type ExampleServer } from '../../test/helpers/example.ts';
import { eventually, needsRedis, startRedis, type TestRedis } from '../../test/helpers/redis-server.ts';
import type { ClientName } from '../../test/helpers/pki.ts';

const opts = needsRedis();
let redis: TestRedis;
let ex: ExampleServer;

before(async () => {
  if (opts.skip) return;
  redis = await startRedis();
  ex = await startExample('submission-rate-limit', () => ({ send_limits: 'alice@example.com   2' }), (config) => {
    config.setIn(['store', 'redis', 'url'], redis.url);
    // The built-in daily cap, lowered so that the test reaches it.
    config.setIn(['listeners', 0, 'limits', 'messagesPerIdentity', 'count'], 4);
    // Time limits a loaded test machine meets (a Redis answer later than 50 ms there is load, not an outage):
    // what is tested is what is counted, not how fast.
    config.setIn(['store', 'redis', 'timeoutMs'], 1000);
    config.setIn(['sandbox', 'timeoutMs'], 2000);
  });
});
after(async () => {
  await ex?.stop();
  await redis?.stop();
});

/** One message from `client`'s certificate (logged in by it): the reply that ended the transaction. */
async function send(client: ClientName, from: string): Promise<string> {
  const c = await smtpClient(ex, { client });
  try {
    return (await c.sendMail(from, ['friend@elsewhere.example'], `From: ${from}\r\nSubject: test\r\n\r\nhello\r\n`)).text;
  } finally {
    await c.quit();
  }
}
const QUEUED = /^250 2\.0\.0 Ok: queued as \w+$/;

test('per certificate: alice\'s device sends 2 an hour (send_limits), then 450 4.7.1 with the wait; bob has his own count', opts, async () => {
  // The server's Redis connection may still be coming up (refusals until then are 451 and count nothing).
  await eventually(async () => QUEUED.test(await send('alice', 'alice@example.com')), 'first message accepted');
  assert.match(await send('alice', 'alice@example.com'), QUEUED);
  assert.equal(await send('alice', 'alice@example.com'), '450 4.7.1 Too many messages from this certificate, try again in 60 min');
  assert.match(await send('bob', 'bob@example.com'), QUEUED);
});

test('per account, built in (limits.messagesPerIdentity): past the cap, 450 4.7.1 before the script runs', opts, async () => {
  for (let i = 0; i < 3; i++) assert.match(await send('bob', 'bob@example.com'), QUEUED); // bob's 2nd to 4th of the day
  assert.equal(await send('bob', 'bob@example.com'), '450 4.7.1 Error: too much mail from bob@example.com, try again later');
});

test('swaks: the refusal as a real client sees it', { skip: opts.skip || needs('swaks').skip }, async () => {
  const r = await run('swaks', ['--server', '127.0.0.1', '--port', String(ex.port()), '--tls', '--tls-ca-path', ex.pki.ca.cert,
    '--tls-cert', ex.pki.clients.alice.cert, '--tls-key', ex.pki.clients.alice.key,
    '--ehlo', 'laptop.example', '--from', 'alice@example.com', '--to', 'friend@elsewhere.example']);
  assert.equal(r.code, 23, `swaks exit 23 (MAIL FROM refused)\n${r.output}`);
  assert.match(r.stdout, /<~\* 450 4\.7\.1 Too many messages from this certificate, try again in 60 min/);
});

test('Redis down: 451 4.3.0 at MAIL FROM (fail closed), never an accept; back: mail flows again', opts, async () => {
  const open = await smtpClient(ex, { client: 'ed25519' }); // a session from before the outage
  await redis.stop();
  try {
    assert.equal((await open.command('MAIL FROM:<ed@example.com>')).text, '451 4.3.0 Temporary local problem, try again later');
    // New connections are greeted (only what needs the store refuses), and refused at MAIL FROM the same way.
    const late = await smtpClient(ex, { client: 'bob' });
    assert.equal((await late.command('MAIL FROM:<bob@example.com>')).text, '451 4.3.0 Temporary local problem, try again later');
    await late.quit();
  } finally {
    await open.quit();
  }
  await redis.start(); // empty: every count starts again
  await eventually(async () => QUEUED.test(await send('alice', 'alice@example.com')), 'accepted again once Redis is back');
});

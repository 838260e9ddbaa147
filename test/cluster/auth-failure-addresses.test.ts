// The failed-AUTH counts of `postern serve` forget the addresses whose failures have expired. Every process keeps
// a copy (the supervisor's, and each child's, told of the others' failures); the copies only ever pruned an
// address that came back, or everything once past 10 000 addresses (a walk over all of them at every failure),
// and the queue process, which records none of its own, never: a server guessed at by a botnet kept every
// address that ever failed, for its whole life. postern_auth_failure_addresses shows what is kept.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { until } from '../helpers/wait.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const ADDRESSES = 'postern_auth_failure_addresses';
/** Addresses that fail once each, at first. */
/** Addresses that fail first: a process that keeps them all stays at 60 or more, one that prunes them goes below 15. */
const GUESSERS = 60;
const WINDOW_MS = 2000;

let c: ClusterProcess | undefined;
after(() => c?.stop());

/** One failed AUTH PLAIN from `localAddress`, on a connection of its own. */
async function failOnce(port: number, localAddress: string): Promise<void> {
  const client = await SmtpTestClient.connect(port, { localAddress });
  try {
    assert.equal((await client.read(30_000)).code, 220);
    await client.command('EHLO guesser.test', 30_000);
    assert.equal((await client.command(`AUTH PLAIN ${b64('\0alice\0wrong')}`, 30_000)).code, 535);
  } finally {
    client.destroy();
  }
}

test('addresses whose failed AUTHs have expired are dropped by every process (the queue process, which records none, included)', { timeout: 300_000 }, async () => {
  c = await startCluster({
    config: `
workers: 1
users: ./users
admin: { listen: "127.0.0.1:{PORT:admin}" }
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    # (60 addresses guess at one account: the account's own limit is not what this counts)
    limits: { greetingDelayMs: 0, authFailuresPerIp: 1000, authFailuresBeforeDelay: 1000, authFailuresPerAccount: 100000, authFailureWindowMs: ${WINDOW_MS} }
`,
    files: { users: `alice:${await hashPassword('right')}\n` },
  });
  await workerPid(c, 0);
  await c.waitFor('the queue process ready', async () => (await c!.cluster()).processes.find((p) => p.role === 'queue')?.ready);
  const kept = async (): Promise<number> => (await scrapeMetrics(c!.port('admin'))).get(ADDRESSES) ?? -1;

  for (let i = 0; i < GUESSERS; i++) await failOnce(c.port('sub'), `127.0.1.${1 + i}`);
  // The last failure is within its window whatever the time taken: at least it is kept (the gauge is wired).
  assert.ok(await kept() >= 1, 'the failures are counted');

  // Guessers that keep coming, one new address at a time: the first ones' windows end, and they go.
  let next = 0;
  await until(`${ADDRESSES} below ${GUESSERS / 4} once the first guessers' failures expired`, async () => {
    await failOnce(c!.port('sub'), `127.0.2.${1 + (next++ % 250)}`);
    await sleep(WINDOW_MS / 8);
    const n = await kept();
    return n >= 1 && n < GUESSERS / 4;
  }, { timeoutMs: 60_000, intervalMs: 0 });
});

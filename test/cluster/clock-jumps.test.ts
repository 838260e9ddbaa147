/**
 * The wall clock is stepped (NTP after a drift, an administrator, a VM restored from a snapshot) while
 * `postern serve` runs; libfaketime moves it for the server's processes only, the monotonic clock untouched.
 * Forward: the supervisor and the workers' watchdogs measured heartbeat silence on the wall clock, so a step
 * of a few seconds killed every child as hung (open sessions cut, deliveries in flight interrupted). Back:
 * the queue kept wall-clock due times, so retries waited until the clock caught up (an hour here), and an
 * address refused for its AUTH failures stayed refused until then too (failure times ahead of the clock).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from '../helpers/sink.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { until } from '../helpers/wait.ts';
import { refusedWithinWindow } from '../helpers/auth-window.ts';
import { startCluster, greeted, type ClusterProcess, ONE_WORKER } from '../helpers/cluster.ts';
import { needsFaketime, startSteppableCluster, type SteppableCluster } from '../helpers/faketime.ts';

const skip = needsFaketime;

const delivery = (sinkPort: number, retry: string): string => `delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${sinkPort} } }
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [${retry}]
`;
const config = (sinkPort: number, retry: string): string => `${ONE_WORKER}${delivery(sinkPort, retry)}`;

const killedLines = (c: ClusterProcess): Array<Record<string, unknown>> => c.logs.filter((l) => /stopped answering|hung|process died/.test(String(l.msg)));

/**
 * The three tests that step the clock with mail in flight share one server (and its sink): each sets the clock back
 * to the real one first, and counts the sink's messages and attempts from its own start. The sink refuses recipients
 * while `refuse` is set; maxAgeHours 1 is for the test past it. (The AUTH test keeps a server of its own: on this
 * one the MX listener `in`, at the default authFailureWindowMs, made the counts' window 10 minutes until that was
 * fixed; auth-window-beside-mx.test.ts.)
 */
let refuse = false;
let shared: { sink: Sink; s: SteppableCluster } | undefined;
async function steppable(): Promise<{ sink: Sink; s: SteppableCluster }> {
  if (!shared) {
    const sink = await startSink({ decide: (stage) => (stage === 'rcpt' && refuse ? { code: 451, text: '4.3.0 Try again later' } : null) });
    const s = await startSteppableCluster(`${config(sink.port, '0.5')}  maxAgeHours: 1\n`);
    shared = { sink, s };
  }
  shared.s.step('+0');
  refuse = false;
  return shared;
}
after(async () => {
  await shared?.s.close();
  await shared?.sink.close();
});

test('the wall clock stepped an hour forward: no process is taken for hung, an open session goes on, mail flows', { skip, timeout: 180_000 }, async () => {
  const { sink, s } = await steppable();
  const delivered = sink.messages.length;
  await s.c.waitFor('every process ready', async () => (await s.c.cluster()).processes.every((p) => p.ready));
  const open = await greeted(s.c);
  s.step('+3600');
  // The worker reads the stepped clock: its acceptance line is an hour ahead.
  const r = await open.sendMail('a@example.test', ['b@example.test'], 'Subject: open session\r\n\r\nx\r\n');
  assert.equal(r.code, 250, 'the session open across the step goes on');
  const id = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
  const accepted = await s.c.waitFor('the acceptance line', () => s.c.logs.find((l) => String(l.msg).startsWith(`${id}: accepted`)));
  assert.ok(Date.parse(String(accepted.time)) > Date.now() + 30 * 60_000, `the worker's clock was stepped (${String(accepted.time)})`);
  for (let i = 0; i < 5; i++) {
    const client = await greeted(s.c);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], `Subject: after ${i}\r\n\r\nx\r\n`)).code, 250);
    await client.quit();
  }
  await sink.waitFor(delivered + 6, 60_000);
  assert.equal((await open.command('NOOP')).code, 250, 'still the same session');
  await open.quit();
  assert.deepEqual(killedLines(s.c), []);
  assert.deepEqual((await s.c.cluster()).processes.map((p) => p.restarts), [0, 0]);
});

/**
 * A message deferred by the next hop, then the clock stepped by `offset`: two more attempts, deferred (no bounce
 * meanwhile), then delivered.
 */
async function deferredAcrossStep(offset: string): Promise<void> {
  const { sink, s } = await steppable();
  const delivered = sink.messages.length;
  const bounces = (): unknown[] => s.c.logs.filter((l) => /sender non-delivery notification/.test(String(l.msg))).map((l) => l.msg);
  const bouncedBefore = bounces().length;
  refuse = true;
  const attempted = sink.attempts.length;
  const client = await greeted(s.c);
  assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: deferred\r\n\r\nx\r\n')).code, 250);
  await client.quit();
  await until('a first attempt, deferred', () => sink.attempts.length >= attempted + 1, { timeoutMs: 60_000 });
  s.step(offset);
  const before = sink.attempts.length;
  await until('two more attempts after the step', () => sink.attempts.length >= before + 2, { timeoutMs: 60_000 });
  assert.deepEqual(bounces().slice(bouncedBefore), [], 'no bounce');
  refuse = false;
  await sink.waitFor(delivered + 1, 60_000);
  assert.deepEqual(killedLines(s.c), []);
}

test('the wall clock stepped an hour back: retries keep their pace instead of waiting for the clock to catch up', { skip, timeout: 180_000 }, async () => {
  await deferredAcrossStep('-3600');
});

// A message's age for maxAgeHours was the wall clock's alone: stepped forward past it (an NTP server gone
// wrong, a typo), every deferred message, however young, bounced at its next attempt as expired.
test('the wall clock stepped forward past maxAgeHours: deferred mail is retried, not bounced', { skip, timeout: 180_000 }, async () => {
  await deferredAcrossStep('+7200');
});

test('the whole server stopped for longer than the hang limits and continued (a suspended VM, SIGSTOP to its process group): no process is taken for hung', { timeout: 180_000 }, async () => {
  const sink = await startSink({});
  const c = await startCluster({ config: config(sink.port, '1'), detached: true });
  try {
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    const open = await greeted(c);
    process.kill(-c.proc.pid!, 'SIGSTOP');
    // The fault's length, not a timing assertion: past the supervisor's 3 s and the watchdog's 1 s.
    await new Promise((r) => setTimeout(r, 4500));
    process.kill(-c.proc.pid!, 'SIGCONT');
    const r = await open.sendMail('a@example.test', ['b@example.test'], 'Subject: across the stop\r\n\r\nx\r\n');
    assert.equal(r.code, 250, 'the session open across the stop goes on');
    await sink.waitFor(1, 60_000);
    await open.quit();
    assert.deepEqual(killedLines(c), []);
    assert.deepEqual((await c.cluster()).processes.map((p) => p.restarts), [0, 0]);
  } finally {
    try { process.kill(-c.proc.pid!, 'SIGCONT'); } catch { /* gone */ }
    await c.stop();
    await sink.close();
  }
});

test('the wall clock stepped an hour back: an address refused for its AUTH failures is let in again after the window, not an hour later', { skip, timeout: 180_000 }, async () => {
  const s = await startSteppableCluster(`
workers: 1
users: ./users
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 2, authFailuresBeforeDelay: 10, authFailureWindowMs: 3000 }
`, { files: { users: `alice:${await hashPassword('right')}\n` } });
  const greeting = async (): Promise<string> => {
    const client = await SmtpTestClient.connect(s.c.port('sub'));
    try {
      return (await client.read(30_000)).text;
    } finally {
      client.destroy();
    }
  };
  const wrongGuess = async (): Promise<void> => {
    const client = await SmtpTestClient.connect(s.c.port('sub'));
    try {
      assert.equal((await client.read(30_000)).code, 220);
      await client.command('EHLO client.test', 30_000);
      const r = await client.command(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}`, 30_000);
      assert.equal(r.code, 535, `a failure under the limit: ${r.text}; server: ${JSON.stringify(s.c.logs.slice(-8).map((l) => l.msg))}`);
    } finally {
      client.destroy();
    }
  };
  try {
    await refusedWithinWindow(3000, 2, wrongGuess, greeting);
    s.step('-3600');
    // The failures were recorded an hour "ahead" of the clock now: they count from the step, for the window.
    await until('a new connection greeted again', async () => (await greeting()).startsWith('220'), { timeoutMs: 60_000 });
  } finally {
    await s.close();
  }
});

// A next hop that limits the recipients per transaction (RCPT 452 4.5.3 "too many recipients", RFC 5321
// §4.5.3.1.10): the refused recipients go in following transactions of the same attempt, not on the retry
// schedule; a plain 452 and 552 5.5.3 count too; other 4xx replies stay per-recipient temporary failures;
// no progress, or MAX_TRANSACTIONS transactions, end the attempt.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { MAX_TRANSACTIONS, isTooManyRecipients } from '../../engine/delivery/transaction.ts';
import { retryMessages } from '../../engine/queue/admin.ts';
import type { AttemptEvent } from '../../engine/queue/runner.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

/** 452 4.5.3 after 2 recipients; `stuck…` always gets 452 4.5.3, `busy…` 451. */
let limited: Sink;
/** A plain "452 Error: too many recipients" (no enhanced code) after 3. */
let plain: Sink;
/** 552 5.5.3 after 1 (RFC 5321: to be treated as temporary). */
let five: Sink;
/** 452 4.5.3 after 1: more recipients than MAX_TRANSACTIONS. */
let one: Sink;
let s: DeliveryServer;

before(async () => {
  limited = await startSink({
    maxRecipients: 2,
    decide(stage, address) {
      if (stage !== 'rcpt') return null;
      if (address.startsWith('stuck')) return { code: 452, text: '4.5.3 Too many recipients' };
      if (address.startsWith('busy')) return { code: 451, text: '4.3.0 Try again later' };
      return null;
    },
  });
  plain = await startSink({ maxRecipients: 3, tooManyReply: { code: 452, text: 'Error: too many recipients' } });
  five = await startSink({ maxRecipients: 1, tooManyReply: { code: 552, text: '5.5.3 Too many recipients' } });
  one = await startSink({ maxRecipients: 1 });
  s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      sandbox: { timeoutMs: 1000 },
      listeners: [testListener('in', { limits: { maxRecipients: 500 } })],
      delivery: smarthostDelivery(limited.port, { retrySchedule: [600] }),
    }),
    scripts: {
      'rcptto.ts': 'export default () => accept();',
      'predelivery.ts': `
const PORTS: Record<string, number> = { 'plain.test': ${plain.port}, 'five.test': ${five.port}, 'many.test': ${one.port} };
export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  const port = PORTS[ctx.destination.domain];
  if (port) return deliver({ host: '127.0.0.1', port });
}
`,
    },
  });
});
after(async () => {
  await s?.stop();
  for (const sink of [limited, plain, five, one]) await sink?.close();
});

const rcpts = (n: number, domain: string): string[] => Array.from({ length: n }, (_, i) => `r${i + 1}@${domain}`);
const from = (sink: Sink, sender: string) => sink.messages.filter((m) => m.from === sender);
const firstAttempt = (id: string): Promise<AttemptEvent> => s.nextAttempt((e) => e.id === id, { past: true });

test('452 4.5.3 after 2 recipients: 5 recipients arrive in 3 transactions on one connection, in one attempt', async () => {
  const id = await s.send('one@origin.test', rcpts(5, 'dest.test'));
  const e = await firstAttempt(id);
  assert.equal(e.attempt, 1);
  assert.equal(e.removed, true, JSON.stringify(e.outcomes));
  assert.deepEqual(e.outcomes.map((o) => [o.recipient, o.status]), rcpts(5, 'dest.test').map((r) => [r, 'delivered']));
  const got = from(limited, 'one@origin.test');
  assert.deepEqual(got.map((m) => m.to), [['r1@dest.test', 'r2@dest.test'], ['r3@dest.test', 'r4@dest.test'], ['r5@dest.test']]);
  assert.equal(new Set(got.map((m) => m.sessionId)).size, 1, 'the following transactions reuse the connection');
  assert.ok(got.every((m) => m.data.equals(got[0]!.data)), 'the same message each time');
  assert.deepEqual(s.attempts.filter((a) => a.id === id).map((a) => a.attempt), [1]);
  // Each transaction is logged as sent; the carry-overs are logged as such, not as deferrals.
  const logs = s.logs.filter((l) => l.id === id);
  assert.deepEqual(logs.filter((l) => l.status === 'sent').map((l) => l.to), [['r1@dest.test', 'r2@dest.test'], ['r3@dest.test', 'r4@dest.test'], ['r5@dest.test']]);
  assert.equal(logs.filter((l) => l.status === 'deferred').length, 0);
  assert.deepEqual(logs.filter((l) => String(l.msg).startsWith('too many recipients for one transaction:')).map((l) => [l.to, l.reply]), [
    [['r3@dest.test', 'r4@dest.test', 'r5@dest.test'], '452 4.5.3 Too many recipients'],
    [['r5@dest.test'], '452 4.5.3 Too many recipients'],
  ]);
});

test('a plain 452 (no enhanced code) and 552 5.5.3 are followed up the same way; 552 5.5.3 is no bounce', async () => {
  const a = await s.send('plain@origin.test', rcpts(7, 'plain.test'));
  const b = await s.send('five@origin.test', rcpts(3, 'five.test'));
  for (const [id, n] of [[a, 7], [b, 3]] as const) {
    const e = await firstAttempt(id);
    assert.equal(e.attempt, 1);
    assert.equal(e.removed, true, JSON.stringify(e.outcomes));
    assert.equal(e.outcomes.filter((o) => o.status === 'delivered').length, n);
    assert.equal(e.bounceId, null);
  }
  assert.deepEqual(from(plain, 'plain@origin.test').map((m) => m.to.length), [3, 3, 1]);
  assert.deepEqual(from(five, 'five@origin.test').map((m) => m.to), [['r1@five.test'], ['r2@five.test'], ['r3@five.test']]);
});

test('other 4xx on RCPT stay per-recipient; a 452 that makes no progress waits for the next attempt', async () => {
  const id = await s.send('two@origin.test', ['a@dest.test', 'stuck@dest.test', 'busy@dest.test']);
  const e = await firstAttempt(id);
  assert.equal(e.attempt, 1);
  assert.equal(e.removed, false);
  assert.ok(e.nextAttemptAt);
  const by = new Map(e.outcomes.map((o) => [o.recipient, o]));
  assert.equal(by.get('a@dest.test')!.status, 'delivered');
  assert.deepEqual([by.get('stuck@dest.test')!.status, by.get('stuck@dest.test')!.reply], ['temporary', '452 4.5.3 Too many recipients']);
  assert.deepEqual([by.get('busy@dest.test')!.status, by.get('busy@dest.test')!.reply], ['temporary', '451 4.3.0 Try again later']);
  assert.deepEqual(from(limited, 'two@origin.test').map((m) => m.to), [['a@dest.test']]);
  // The first transaction, and one more for `stuck` alone (refused again: no progress, so no third); `busy` is not resent.
  assert.equal(limited.attempts.filter((a) => a.from === 'two@origin.test').length, 2);
  assert.ok(s.logs.some((l) => l.id === id && String(l.msg).startsWith('too many recipients for one transaction, and no progress')));
});

test(`at most ${MAX_TRANSACTIONS} transactions per attempt; the rest go in the next attempt`, async () => {
  const all = rcpts(MAX_TRANSACTIONS + 2, 'many.test');
  const id = await s.send('many@origin.test', all);
  const e = await firstAttempt(id);
  assert.equal(e.attempt, 1);
  assert.equal(e.removed, false);
  assert.deepEqual(e.outcomes.filter((o) => o.status === 'delivered').map((o) => o.recipient), all.slice(0, MAX_TRANSACTIONS));
  assert.deepEqual(e.outcomes.filter((o) => o.status === 'temporary').map((o) => [o.recipient, o.reply]),
    all.slice(MAX_TRANSACTIONS).map((r) => [r, '452 4.5.3 Too many recipients']));
  assert.equal(from(one, 'many@origin.test').length, MAX_TRANSACTIONS);
  assert.equal(one.attempts.length, MAX_TRANSACTIONS);
  // postern queue retry: the next attempt sends the two left over, in two transactions.
  assert.deepEqual(await retryMessages(s.runtime.spool, [id]), [id]);
  await s.queue!.scan();
  const done = await s.nextAttempt((x) => x.id === id && x.attempt === 2, { past: true });
  assert.equal(done.removed, true, JSON.stringify(done.outcomes));
  assert.deepEqual(done.outcomes.map((o) => [o.recipient, o.status]), all.slice(MAX_TRANSACTIONS).map((r) => [r, 'delivered']));
  assert.deepEqual(from(one, 'many@origin.test').flatMap((m) => m.to), all);
});

test('which RCPT replies mean "too many recipients"', () => {
  const rcpt = (response: string) => isTooManyRecipients({ command: 'RCPT TO', response });
  assert.equal(rcpt('452 4.5.3 Error: too many recipients'), true); // Postfix
  assert.equal(rcpt('452 too many recipients'), true); // Exim, smtp-server without enhanced codes
  assert.equal(rcpt('552 5.5.3 Too many recipients'), true);
  assert.equal(rcpt('452 4.2.2 Mailbox full'), false);
  assert.equal(rcpt('452 4.3.1 Insufficient system storage'), false);
  assert.equal(rcpt('552 5.2.2 Mailbox full'), false);
  assert.equal(rcpt('451 4.5.3 Too many recipients'), false);
  assert.equal(isTooManyRecipients({ command: 'DATA', response: '452 4.5.3 Too many recipients' }), false);
});

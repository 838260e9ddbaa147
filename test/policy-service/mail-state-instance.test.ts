// Postfix names a transaction's `instance` only from its first RCPT on: at MAIL the attribute is empty (seen with
// Postfix 3.7). The mailfrom verdict was kept per instance, so with smtpd_delay_reject = no and the service in
// smtpd_sender_restrictions and smtpd_recipient_restrictions, the MAIL request's verdict (instance empty) was not
// the RCPT request's (instance set): the mailfrom script ran twice per transaction, and what it counts (rate()
// of messages per sender) counted each message twice. Now the RCPT request takes the verdict of its MAIL.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import type { TestServer } from '../helpers/postern.ts';
import { needsPostfix } from '../helpers/postfix.ts';
import { startPostfixPolicy, type PostfixPolicy } from '../helpers/postfix-policy.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const { skip } = needsPostfix();
let s: TestServer;
let port = 0;
let peers: PostfixPolicy | undefined;

before(async () => {
  if (skip) return;
  const policy = 'check_policy_service unix:private/postern';
  peers = await startPostfixPolicy('mailstate', { postern_policy: policy, smtpd_delay_reject: 'no' }, (p) => [
    `127.0.0.1:${p} inet n - n - - smtpd -o smtpd_sender_restrictions=$postern_policy -o smtpd_recipient_restrictions=$postern_policy,permit_mynetworks,reject`,
  ], {
    'mailfrom.js': `export default async function (ctx) {
  const r = await rate('messages:' + ctx.address.address, 2, 3600);
  log('mailfrom ran at ' + ctx.postfix.protocolState + ', count ' + r.count);
  if (!r.allowed) return defer('too many messages from this sender');
}`,
  });
  ({ s, port } = peers);
});
after(() => peers?.stop());

test('smtpd_delay_reject = no: the mailfrom script runs once per transaction, at MAIL, and its verdict decides the RCPTs', { skip, timeout: 60_000 }, async () => {
  const c = await SmtpTestClient.connect(port);
  await c.read();
  assert.equal((await c.command('EHLO client.example')).code, 250);
  // Two messages from one sender, two recipients each: a limit of 2 messages a sender lets both through (each message
  // counted twice, the second was deferred at its first RCPT).
  for (const n of [1, 2]) {
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250, `MAIL ${n}`);
    for (const r of ['r1', 'r2']) {
      const reply = await c.command(`RCPT TO:<${r}@elsewhere.example>`);
      assert.equal(reply.code, 250, `message ${n}, RCPT ${r}: ${reply.text}`);
    }
    assert.equal((await c.command('RSET')).code, 250);
  }
  await c.quit();
  const runs = s.logs.filter((l) => String(l.msg).startsWith('mailfrom ran')).map((l) => l.msg);
  assert.deepEqual(runs, ['mailfrom ran at MAIL, count 1', 'mailfrom ran at MAIL, count 2']);
});

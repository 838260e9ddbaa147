// A sender or recipient holding a character no address carries (a soft hyphen, a bidi override, a control, an
// unassigned code point): a listener refuses it with 553 5.1.3 before any script sees it, since every string compare
// of a script or table sees another address while a person, a log and the next hop read ceo@. Behind Postfix
// (smtputf8_enable = yes passes them on) the scripts got them: a mailfrom script refusing ceo@example.org unless
// authenticated let ce<U+00AD>o@example.org through, and a rcptto script's blocked recipient was queued and
// relayed as block<U+00AD>ed@. The service now refuses them as a listener does, at every state that names them.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needsPostfix } from '../helpers/postfix.ts';
import { smtpSession, startPostfixPolicy, type PostfixPolicy } from '../helpers/postfix-policy.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const REFUSED = '553 5.1.3 Control, format or unassigned characters in an address are not accepted';
const scripts = {
  'mailfrom.js': `export default (ctx) => { log('mailfrom ran ' + JSON.stringify(ctx.address.address)); return ctx.address.address === 'ceo@example.org' ? reject('not from outside') : undefined; }`,
  'rcptto.js': `export default (ctx) => { log('rcptto ran ' + JSON.stringify(ctx.address.address)); return ctx.address.localPart === 'blocked' ? reject('blocked recipient') : undefined; }`,
  'data.js': `export default (ctx) => { log('data ran'); }`,
};

const { skip } = needsPostfix();
let peers: PostfixPolicy | undefined;

before(async () => {
  if (skip) return;
  peers = await startPostfixPolicy('invisible', { smtputf8_enable: 'yes' }, (p) => [
    `127.0.0.1:${p} inet n - n - - smtpd -o smtpd_recipient_restrictions=check_policy_service,unix:private/postern,permit_mynetworks,reject`,
  ], scripts);
});
after(() => peers?.stop());

test('behind a real Postfix: a sender or recipient with a soft hyphen or a bidi override is refused with 553 5.1.3, never queued', { skip, timeout: 90_000 }, async () => {
  const { port, s } = peers!;
  // What the scripts refuse, spelled plainly: refused by them (the set-up works).
  assert.deepEqual((await smtpSession(port, ['MAIL FROM:<ceo@example.org>', 'RCPT TO:<r@elsewhere.example>'])).map((r) => r.slice(0, 3)), ['250', '550']);
  for (const [mail, rcpt] of [
    ['MAIL FROM:<ce\u00ADo@example.org> SMTPUTF8', 'RCPT TO:<r@elsewhere.example>'],
    ['MAIL FROM:<a@client.example> SMTPUTF8', 'RCPT TO:<block\u00ADed@elsewhere.example>'],
    ['MAIL FROM:<a@client.example> SMTPUTF8', 'RCPT TO:<\u202Edekcolb@elsewhere.example>'],
    ['MAIL FROM:<a@client.example> SMTPUTF8', 'RCPT TO:<blocked\u{E0041}@elsewhere.example>'],
  ]) {
    const replies = await smtpSession(port, [mail!, rcpt!, 'DATA']);
    assert.match(replies[1]!, new RegExp(`^553 5\\.1\\.3 .*${REFUSED.slice(10)}$`), `${mail} ${rcpt}: ${replies.join(' | ')}`);
    assert.match(replies[2]!, /^554 5\.5\.1 Error: no valid recipients/, 'nothing to queue');
  }
  // Plain mail still goes through the same service.
  const plain = await smtpSession(port, ['MAIL FROM:<a@client.example>', 'RCPT TO:<r@elsewhere.example>', 'DATA']);
  assert.deepEqual(plain.map((r) => r.slice(0, 3)), ['250', '250', '354', '250']);
  assert.equal(s.logs.filter((l) => /^(mailfrom|rcptto) ran .*\\u/.test(String(l.msg))).length, 0, 'no script saw such an address');
});

test('over the policy protocol: refused at every state that names such an address, in its local part or a domain IDNA refuses, before any script runs', async () => {
  const t: TestServer = await startTestServer({ config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n', scripts });
  try {
    const c = await PolicyClient.connect({ port: Number(t.policyAddresses.get('main')!.split(':').pop()) });
    const ask = async (attrs: Record<string, string | number>) => (await c.ask(rcptRequest(attrs))).replace(/^action=/, '');
    for (const state of ['MAIL', 'RCPT', 'DATA', 'END-OF-MESSAGE', 'VRFY']) {
      assert.equal(await ask({ protocol_state: state, sender: 'ce\u00ADo@example.org', recipient: 'r@elsewhere.example' }), REFUSED, `${state}: sender`);
      assert.equal(await ask({ protocol_state: state, sender: 'a@client.example', recipient: 'r@else\u0007where.example' }), REFUSED, `${state}: a domain IDNA refuses`);
      assert.equal(await ask({ protocol_state: state, sender: 'a@client.example', recipient: 'r\u0007@elsewhere.example' }), REFUSED, `${state}: a control`);
    }
    // What carries no such character is decided as before: ZWNJ and ZWJ (Persian, emoji sequences) are letters' joiners.
    assert.equal(await ask({ protocol_state: 'RCPT', sender: '', recipient: 'blocked@elsewhere.example' }), '550 5.7.1 blocked recipient');
    assert.equal(await ask({ protocol_state: 'RCPT', sender: 'a@client.example', recipient: 'm\u200Cr@elsewhere.example' }), 'DUNNO');
    assert.equal(await ask({ protocol_state: 'CONNECT', sender: '', recipient: '' }), 'DUNNO');
    // In a domain IDNA takes, a soft hyphen or a zero-width space is mapped out, as a listener maps it (and Postfix for its lookups).
    assert.equal(await ask({ protocol_state: 'RCPT', sender: 'a@client.example', recipient: 'blocked@else\u00ADwhere\u200B.example' }), '550 5.7.1 blocked recipient');
    assert.equal(t.logs.filter((l) => String(l.msg).startsWith('data ran')).length, 0, 'the data script never ran');
    const refusal = t.logs.find((l) => l.msg === 'policy answer' && l.decision === 'reject' && String(l.sender).startsWith('ce'));
    assert.ok(refusal, 'logged as a refusal');
    assert.match(String(refusal.reason), /invisible, bidi, control/);
    c.close();
  } finally {
    await t.stop();
  }
});

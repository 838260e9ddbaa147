// Envelope addresses a listener refuses (501 5.1.3) or spells otherwise, so that no script ever saw them so, but
// Postfix takes and delivers elsewhere than they read: a domain with its trailing dot (r@blocked.example. goes to blocked.example, Postfix's
// trivial-rewrite drops the dot), a bang path without a domain (blocked.example!r goes to r@blocked.example,
// swap_bangpath), a domain in another spelling of its name (r@\uFF42locked.example: a listener, and Postfix for
// its lookups, map it through IDNA). The scripts got them as the client wrote them: a rcptto script refusing the domain
// blocked.example, or a mailfrom script refusing ceo@example.org, let them through. The service now gives the
// scripts (and ctx.postfix.attributes, and its log) the address as Postfix delivers it.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { needsPostfix } from '../helpers/postfix.ts';
import { smtpSession, startPostfixPolicy, type PostfixPolicy } from '../helpers/postfix-policy.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const scripts = {
  'mailfrom.js': `export default (ctx) => ctx.address.address === 'ceo@example.org' ? reject('not from outside') : undefined;`,
  'rcptto.js': `export default (ctx) => ctx.address.domain === 'blocked.example' ? reject('blocked domain')
    : ctx.address.localPart.startsWith('echo') ? reject(JSON.stringify([ctx.address.address, ctx.address.domain, ctx.transaction.sender.address, ctx.postfix.attributes.recipient, ctx.postfix.attributes.sender])) : undefined;`,
};

const { skip } = needsPostfix();
let peers: PostfixPolicy | undefined;

before(async () => {
  if (skip) return;
  peers = await startPostfixPolicy('trailingdot', { smtputf8_enable: 'yes' }, (p) => [
    `127.0.0.1:${p} inet n - n - - smtpd -o smtpd_recipient_restrictions=check_policy_service,unix:private/postern,permit_mynetworks,reject`,
  ], scripts);
});
after(() => peers?.stop());

test('behind a real Postfix: a domain written with its trailing dot, or a bang path, is refused as the scripts refuse the address Postfix delivers to; accepted mail is delivered so', { skip, timeout: 90_000 }, async () => {
  const { port, sink } = peers!;
  for (const [mail, rcpt, refusal] of [
    ['MAIL FROM:<a@client.example>', 'RCPT TO:<r@blocked.example.>', /^550 5\.7\.1 .*blocked domain$/],
    ['MAIL FROM:<ceo@example.org.>', 'RCPT TO:<r@elsewhere.example>', /^550 5\.7\.1 .*not from outside$/],
    ['MAIL FROM:<a@client.example>', 'RCPT TO:<blocked.example!r>', /^550 5\.7\.1 .*blocked domain$/],
    ['MAIL FROM:<a@client.example> SMTPUTF8', 'RCPT TO:<r@\uFF42locked.example>', /^550 5\.7\.1 .*blocked domain$/],
    ['MAIL FROM:<a@client.example> SMTPUTF8', 'RCPT TO:<r@BLOCKED.\uFF25xample>', /^550 5\.7\.1 .*blocked domain$/],
  ] as const) {
    const replies = await smtpSession(port, [mail, rcpt, 'DATA']);
    assert.match(replies[1]!, refusal, `${mail} ${rcpt}: ${replies.join(' | ')}`);
    assert.match(replies[2]!, /^554 5\.5\.1 Error: no valid recipients/, 'nothing queued');
  }
  // What Postfix delivers a dotted domain to: the name without the dot.
  const ok = await smtpSession(port, ['MAIL FROM:<a@client.example>', 'RCPT TO:<dotted@elsewhere.example.>', 'DATA']);
  assert.deepEqual(ok.map((r) => r.slice(0, 3)), ['250', '250', '354', '250'], ok.join(' | '));
  const delivered = await sink.waitFor(/dotted@/);
  assert.match(delivered, /^X-Rcpt-Args: <dotted@elsewhere\.example> /m, 'RCPT TO without the dot (ORCPT keeps what the client wrote)');
  const swapped = await smtpSession(port, ['MAIL FROM:<a@client.example>', 'RCPT TO:<elsewhere.example!banged>', 'DATA']);
  assert.deepEqual(swapped.map((r) => r.slice(0, 3)), ['250', '250', '354', '250'], swapped.join(' | '));
  assert.match(await sink.waitFor(/banged/), /^X-Rcpt-Args: <banged@elsewhere\.example> /m, 'the bang path delivered as user@site');
});

test('over the policy protocol: the sender and recipient as Postfix delivers them (no trailing dot, a bang path as user@site), everywhere a script looks; other spellings kept', async () => {
  const t = await startTestServer({ config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n', scripts });
  try {
    const c = await PolicyClient.connect({ port: Number(t.policyAddresses.get('main')!.split(':').pop()) });
    const ask = async (attrs: Record<string, string | number>) => (await c.ask(rcptRequest(attrs))).replace(/^action=\S+ \S+ /, '');
    assert.equal(await ask({ sender: 'a@client.example.', recipient: 'echo@elsewhere.example.' }),
      JSON.stringify(['echo@elsewhere.example', 'elsewhere.example', 'a@client.example', 'echo@elsewhere.example', 'a@client.example']));
    assert.equal(await ask({ sender: 'a@.', recipient: 'echo@elsewhere.example..' }),
      JSON.stringify(['echo@elsewhere.example..', 'elsewhere.example..', 'a@.', 'echo@elsewhere.example..', 'a@.']), 'Postfix strips one dot, not a dot after @ or a second one');
    assert.equal(await ask({ sender: 'site.example!a', recipient: 'far.example!echo' }),
      JSON.stringify(['echo@far.example', 'far.example', 'a@site.example', 'echo@far.example', 'a@site.example']), 'a bang path as user@site');
    assert.equal(await ask({ sender: 'one!two!a', recipient: 'echo!@x.example' }),
      JSON.stringify(['echo!@x.example', 'x.example', 'two!a@one', 'echo!@x.example', 'two!a@one']), 'the first site only; an address with a domain is not a bang path');
    assert.equal(await ask({ sender: 'a@B\u00DCCHER.example', recipient: 'echo@\uFF46ar.example.' }),
      JSON.stringify(['echo@far.example', 'far.example', 'a@b\u00FCcher.example', 'echo@far.example', 'a@b\u00FCcher.example']), 'a non-ASCII domain as IDNA maps it, as a listener gives it');
    assert.equal(await ask({ sender: 'a@xn--bcher-kva.example', recipient: 'echo@EXAMPLE.org' }),
      JSON.stringify(['echo@EXAMPLE.org', 'example.org', 'a@xn--bcher-kva.example', 'echo@EXAMPLE.org', 'a@xn--bcher-kva.example']), 'an ASCII domain as written (A-labels too)');
    assert.equal(await ask({ sender: 'a.', recipient: 'echo.@elsewhere.example' }),
      JSON.stringify(['echo.@elsewhere.example', 'elsewhere.example', 'a.', 'echo.@elsewhere.example', 'a.']), 'a local part\'s dot is not a domain\'s');
    c.close();
  } finally {
    await t.stop();
  }
});

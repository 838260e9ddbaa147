// Postfix asks the restriction lists at VRFY (smtpd_recipient_restrictions, and with smtpd_delay_reject = yes the
// client, helo and sender lists first) and at ETRN (smtpd_etrn_restrictions, the client and helo lists first), with
// protocol_state VRFY or ETRN. Those states have no hook of their own, and they were answered DUNNO before the
// earlier stages were asked: a client the connect script rejects (a DNSBL listing, say) was refused its mail but
// still had its VRFY answered, `252 2.0.0 <address>` or `550 5.1.1 ... User unknown`, and so could harvest addresses.
// Now the connect and helo scripts decide those states first, as they do every other.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needsPostfix } from '../helpers/postfix.ts';
import { startPostfixPolicy, type PostfixPolicy } from '../helpers/postfix-policy.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const scripts = {
  'connect.js': "export default function (ctx) { if (ctx.connection.remoteAddress === '192.0.2.66') return reject('connect refused'); }",
  'helo.js': "export default function (ctx) { if (ctx.helo.name === 'bad.example') return reject('helo refused'); }",
};

test('over the policy protocol: VRFY and ETRN are refused by the connect or helo script, else DUNNO', async () => {
  const t = await startTestServer({ config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n', scripts });
  try {
    const c = await PolicyClient.connect({ port: Number(t.policyAddresses.get('main')!.split(':').pop()) });
    const ask = async (attrs: Record<string, string | number>) => (await c.ask(rcptRequest(attrs))).replace(/^action=/, '');
    assert.equal(await ask({ protocol_state: 'VRFY', client_port: 1, client_address: '192.0.2.66' }), '554 5.7.1 connect refused');
    assert.equal(await ask({ protocol_state: 'ETRN', client_port: 2, client_address: '192.0.2.66' }), '554 5.7.1 connect refused');
    assert.equal(await ask({ protocol_state: 'VRFY', client_port: 3, helo_name: 'bad.example' }), '550 5.7.1 helo refused');
    assert.equal(await ask({ protocol_state: 'VRFY', client_port: 4 }), 'DUNNO');
    assert.equal(await ask({ protocol_state: 'ETRN', client_port: 5 }), 'DUNNO');
    c.close();
  } finally {
    await t.stop();
  }
});

const { skip } = needsPostfix();
let s: TestServer;
let port = 0;
let peers: PostfixPolicy | undefined;

before(async () => {
  if (skip) return;
  peers = await startPostfixPolicy('vrfy', { smtpd_authorized_xclient_hosts: '127.0.0.0/8', mynetworks: '127.0.0.0/8 192.0.2.0/24' }, (p) => [
    // The documented setup: the service in smtpd_recipient_restrictions.
    `127.0.0.1:${p} inet n - n - - smtpd -o smtpd_recipient_restrictions=check_policy_service,unix:private/postern,permit_mynetworks,reject`,
  ], scripts);
  ({ s, port } = peers);
});
after(() => peers?.stop());

test('behind a real Postfix, a client the connect script rejects has its VRFY refused too', { skip, timeout: 60_000 }, async () => {
  const c = await SmtpTestClient.connect(port);
  await c.read();
  assert.equal((await c.command('EHLO proxy.example')).code, 250);
  assert.equal((await c.command('XCLIENT ADDR=192.0.2.66')).code, 220);
  assert.equal((await c.command('EHLO client.example')).code, 250);
  const vrfy = await c.command('VRFY someone@elsewhere.example');
  assert.match(vrfy.text, /^554 5\.7\.1 .*connect refused/, vrfy.text);
  await c.quit();
});

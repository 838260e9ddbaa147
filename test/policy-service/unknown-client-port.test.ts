// Without the client's port (Postfix before 3.0 sends no client_port; XCLIENT PORT=[UNAVAILABLE] makes it `unknown`),
// the connect and helo verdicts, kept per client address and port, were kept for every later session of that client
// on one smtpd process's policy connection: a connect script limiting a client to one session an hour (rate())
// ran at its first session only, and the next ones were accepted with its verdict. Now, when the port is unknown,
// they are kept per transaction (Postfix's instance) and a request that names none runs them again.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needsPostfix } from '../helpers/postfix.ts';
import { startPostfixPolicy, type PostfixPolicy } from '../helpers/postfix-policy.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const connectScript = `export default async function (ctx) {
  const r = await rate('sessions:' + ctx.connection.remoteAddress, 1, 3600);
  log('connect ran at ' + ctx.postfix.protocolState + ', count ' + r.count);
  if (!r.allowed) return defer('one session an hour');
}`;

const { skip } = needsPostfix();
let s: TestServer;
let port = 0;
let peers: PostfixPolicy | undefined;

before(async () => {
  if (skip) return;
  peers = await startPostfixPolicy('noport', { smtpd_authorized_xclient_hosts: '127.0.0.0/8', mynetworks: '127.0.0.0/8 192.0.2.0/24' }, (p) => [
    // One smtpd process: every session is served by it, on its one policy connection.
    `127.0.0.1:${p} inet n - n - 1 smtpd -o smtpd_recipient_restrictions=check_policy_service,unix:private/postern,permit_mynetworks,reject`,
  ], { 'connect.js': connectScript });
  ({ s, port } = peers);
});
after(() => peers?.stop());

test('behind XCLIENT PORT=[UNAVAILABLE], each session of one client runs the connect script', { skip, timeout: 60_000 }, async () => {
  const rcpt: number[] = [];
  for (let session = 1; session <= 2; session++) {
    const c = await SmtpTestClient.connect(port);
    await c.read();
    assert.equal((await c.command('EHLO proxy.example')).code, 250);
    assert.equal((await c.command('XCLIENT ADDR=192.0.2.7 PORT=[UNAVAILABLE]')).code, 220);
    assert.equal((await c.command('EHLO client.example')).code, 250);
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    rcpt.push((await c.command('RCPT TO:<r@elsewhere.example>')).code);
    await c.quit();
  }
  // The second session is over the script's limit: deferred (it was accepted with the first session's verdict).
  assert.deepEqual(rcpt, [250, 450]);
});

test('over the policy protocol without client_port (Postfix before 3.0): a verdict is kept per transaction only', async () => {
  const t = await startTestServer({ config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n', scripts: { 'connect.js': connectScript } });
  try {
    const c = await PolicyClient.connect({ port: Number(t.policyAddresses.get('main')!.split(':').pop()) });
    const ask = async (attrs: Record<string, string | number>) => (await c.ask(rcptRequest(attrs))).replace(/^action=/, '');
    const old = { client_port: '', server_address: '', server_port: '' };
    // Session 1: two recipients of one transaction share the verdict (the script runs once).
    assert.equal(await ask({ ...old, instance: 'a.1.0', recipient: 'r1@elsewhere.example' }), 'DUNNO');
    assert.equal(await ask({ ...old, instance: 'a.1.0', recipient: 'r2@elsewhere.example' }), 'DUNNO');
    // Session 2 of the same client: its own transaction, so the script runs again, and defers.
    assert.match(await ask({ ...old, instance: 'b.1.0' }), /^DEFER_IF_PERMIT one session an hour/);
    assert.deepEqual(t.logs.filter((l) => String(l.msg).startsWith('connect ran')).map((l) => l.msg), ['connect ran at RCPT, count 1', 'connect ran at RCPT, count 1']);
    c.close();
  } finally {
    await t.stop();
  }
});

// Postfix's protocol_state names the command being answered, not the restriction list that asks: with its default
// smtpd_delay_reject = yes, a check_policy_service in smtpd_client_restrictions, smtpd_helo_restrictions or
// smtpd_sender_restrictions is asked at RCPT, with protocol_state=RCPT. Each request ran only its state's hook, so a
// connect, helo or mailfrom script's reject was answered DUNNO there (no rcptto script), and Postfix delivered the
// mail the script refused (seen behind a real Postfix: a connect.js rejecting every client, the mail at the sink).
// Now the earlier stages' scripts decide first, each once per SMTP session (connect, helo) or transaction (mailfrom).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { run, needs } from '../helpers/example.ts';
import { freePort, needsPostfix, startPostfix, startSmtpSink, type PostfixInstance, type SmtpSink } from '../helpers/postfix.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const scriptOf = (hook: string, refuses: string): string => `export default function (ctx) {
  log('${hook} ran');
  if (${refuses}) return reject('${hook} refused');
}`;

test('over the policy protocol: a RCPT request is refused by the connect, helo or mailfrom script; each runs once per session or transaction', async () => {
  const s = await startTestServer({
    config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n',
    scripts: {
      'connect.js': scriptOf('connect', "ctx.connection.remoteAddress === '192.0.2.66'"),
      'helo.js': scriptOf('helo', "ctx.helo.name === 'bad.example'"),
      'mailfrom.js': scriptOf('mailfrom', "ctx.address.localPart === 'spam'"),
      'rcptto.js': "export default function () { log('rcptto ran'); }",
    },
  });
  try {
    const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('main')!.split(':').pop()) });
    const ask = async (attrs: Record<string, string | number>) => (await c.ask(rcptRequest(attrs))).replace(/^action=/, '');
    // One whole session asked at every state: each earlier stage's script runs once, whichever state asks first.
    const session = { client_port: 1000, instance: 'a.b.1.0' };
    for (const state of ['CONNECT', 'EHLO', 'MAIL', 'RCPT']) assert.equal(await ask({ ...session, protocol_state: state }), 'DUNNO', state);
    assert.equal(await ask({ ...session, protocol_state: 'RCPT', recipient: 'second@elsewhere.example' }), 'DUNNO');
    assert.equal(await ask({ ...session, protocol_state: 'DATA' }), 'DUNNO');
    const ran = (hook: string) => s.logs.filter((l) => l.msg === `${hook} ran`).length;
    assert.deepEqual(['connect', 'helo', 'mailfrom', 'rcptto'].map(ran), [1, 1, 1, 2]);
    // A second transaction of that session runs mailfrom again, not connect or helo.
    assert.equal(await ask({ ...session, instance: 'a.b.2.1', protocol_state: 'RCPT' }), 'DUNNO');
    assert.deepEqual(['connect', 'helo', 'mailfrom', 'rcptto'].map(ran), [1, 1, 2, 3]);
    // The EHLO of another TLS state (before STARTTLS, or after it) runs the helo script again, as on a listener.
    assert.equal(await ask({ ...session, protocol_state: 'EHLO', encryption_protocol: '' }), 'DUNNO');
    assert.deepEqual(['connect', 'helo'].map(ran), [1, 2]);
    // Sessions asked at RCPT only (smtpd_delay_reject = yes): the earlier stage's reject is the answer.
    assert.equal(await ask({ client_port: 1001, protocol_state: 'RCPT', client_address: '192.0.2.66' }), '554 5.7.1 connect refused');
    assert.equal(await ask({ client_port: 1002, protocol_state: 'RCPT', helo_name: 'bad.example' }), '550 5.7.1 helo refused');
    assert.equal(await ask({ client_port: 1003, protocol_state: 'MAIL', sender: 'spam@example.org' }), '550 5.7.1 mailfrom refused');
    assert.equal(await ask({ client_port: 1003, protocol_state: 'RCPT', sender: 'spam@example.org' }), '550 5.7.1 mailfrom refused');
    assert.equal(await ask({ client_port: 1004, protocol_state: 'DATA', sender: 'spam@example.org' }), '550 5.7.1 mailfrom refused');
    // The refusal's line names the script that refused.
    assert.ok(s.logs.some((l) => l.msg === 'policy answer' && String(l.script).endsWith('/connect.js') && l.state === 'RCPT'));
    c.close();
  } finally {
    await s.stop();
  }
});

const skip = needsPostfix().skip || needs('swaks').skip;
let pf: PostfixInstance;
let sink: SmtpSink;
let s: TestServer;
/** A port per restriction list that asks the service (smtpd_delay_reject left at its default, yes), and one asking in all. */
const ports: Record<'client' | 'helo' | 'sender' | 'all', number> = { client: 0, helo: 0, sender: 0, all: 0 };

before(async () => {
  if (skip) return;
  sink = await startSmtpSink();
  for (const k of Object.keys(ports) as Array<keyof typeof ports>) ports[k] = await freePort();
  const policy = 'check_policy_service unix:private/postern';
  pf = await startPostfix('delayed', {
    relayhost: `[127.0.0.1]:${sink.port}`, smtp_tls_security_level: 'none', smtpd_relay_restrictions: 'permit_mynetworks, reject',
    postern_policy: policy,
  }, [
    `127.0.0.1:${ports.client} inet n - n - - smtpd -o smtpd_client_restrictions=$postern_policy`,
    `127.0.0.1:${ports.helo} inet n - n - - smtpd -o smtpd_helo_restrictions=$postern_policy`,
    `127.0.0.1:${ports.sender} inet n - n - - smtpd -o smtpd_sender_restrictions=$postern_policy`,
    `127.0.0.1:${ports.all} inet n - n - - smtpd -o smtpd_client_restrictions=$postern_policy -o smtpd_helo_restrictions=$postern_policy -o smtpd_sender_restrictions=$postern_policy`,
  ]);
  s = await startTestServer({
    config: `policyServices:\n  - name: postfix\n    listen: ${JSON.stringify(`unix:${join(pf.dir, 'spool', 'private', 'postern')}`)}\n    socket: { owner: postfix, mode: '0660' }\n`,
    scripts: {
      'connect.js': scriptOf('connect', `ctx.connection.localPort === ${ports.client}`),
      'helo.js': scriptOf('helo', `ctx.connection.localPort === ${ports.helo}`),
      'mailfrom.js': scriptOf('mailfrom', `ctx.connection.localPort === ${ports.sender}`),
    },
  }).catch(async (err: unknown) => { await pf.stop(); throw err; });
});
after(async () => {
  await s?.stop();
  await pf?.stop();
  await sink?.stop();
});

test('behind a real Postfix, a connect, helo or mailfrom script asked from its restriction list refuses the mail', { skip, timeout: 120_000 }, async () => {
  const swaks = (port: number, subject: string) => run('swaks', ['--server', '127.0.0.1', '--port', String(port), '--ehlo', 'client.example',
    '--from', 'a@example.org', '--to', 'r@elsewhere.example', '--header', `Subject: ${subject}`]);
  for (const [list, hook] of [['client', 'connect'], ['helo', 'helo'], ['sender', 'mailfrom']] as const) {
    const r = await swaks(ports[list], `refused by ${hook}`);
    assert.notEqual(r.code, 0, `smtpd_${list}_restrictions: refused\n${r.output}`);
    assert.match(r.output, new RegExp(`<\\*\\* 5\\d\\d 5\\.7\\.1 .*${hook} refused`), r.output);
  }
  const ham = await swaks(ports.all, 'accepted by every stage');
  assert.equal(ham.code, 0, ham.output);
  await sink.waitFor(/Subject: accepted by every stage/);
  assert.ok(!(await sink.messages()).some((m) => /Subject: refused by/.test(m)), 'no refused message reached the next hop');
});

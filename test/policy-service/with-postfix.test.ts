// The policy service with a real Postfix: the mail state and instance, the client's port (same or unknown), VRFY and
// ETRN at earlier stages, delayed restrictions, Postfix's attributes and HOLD. One file for what were several (one
// test process and one load of the engine instead of one each), each its own describe with its own servers, as before.
import { test, after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { join } from 'node:path';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { type TestServer, startTestServer } from '../helpers/postern.ts';
import { needsPostfix, freePort, startPostfix, startSmtpSink, type PostfixInstance, type SmtpSink } from '../helpers/postfix.ts';
import { startPostfixPolicy, type PostfixPolicy } from '../helpers/postfix-policy.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';
import { run, needs } from '../helpers/example.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import { issueClientCertificate } from '../../engine/certificates/index.ts';

describe('mail-state-instance', () => {
  // Postfix names a transaction's `instance` only from its first RCPT on: at MAIL the attribute is empty (seen with
  // Postfix 3.7). The mailfrom verdict was kept per instance, so with smtpd_delay_reject = no and the service in
  // smtpd_sender_restrictions and smtpd_recipient_restrictions, the MAIL request's verdict (instance empty) was not
  // the RCPT request's (instance set): the mailfrom script ran twice per transaction, and what it counts (rate()
  // of messages per sender) counted each message twice. Now the RCPT request takes the verdict of its MAIL.
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
});

describe('same-client-port', () => {
  // The connect and helo verdicts are kept per SMTP session, told apart by the client's address and port. A client
  // may bind its port: connecting again from the same one, to the same smtpd process (whose policy connection lives
  // on), it was the same session to the service, and took the first session's verdict. Behind a real Postfix, a
  // connect script allowing one session an hour per client ran once for three sessions from one port, and all three
  // were accepted. Now a request of a session's first transaction (Postfix's instance numbers it 0) other than the
  // one the verdict was kept in runs the script again.
  const connectScript = `export default async function (ctx) {
  const r = await rate('sessions:' + ctx.connection.remoteAddress, 1, 3600);
  log('connect ran at ' + ctx.postfix.protocolState + ', count ' + r.count);
  if (!r.allowed) return defer('one session an hour');
}`;

  /** One SMTP session from `localPort`: the reply to its one RCPT. */
  async function session(port: number, localPort: number): Promise<string> {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.1', localPort });
    socket.setEncoding('utf8');
    let text = '';
    let wake = (): void => {};
    socket.on('data', (chunk: string) => { text += chunk; wake(); });
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
    const reply = async (): Promise<string> => {
      while (!/^\d{3} [^\n]*\n/m.test(text)) await new Promise<void>((resolve) => { wake = resolve; });
      const line = /^\d{3} [^\n]*\n/m.exec(text)!;
      text = text.slice(line.index + line[0].length);
      return line[0].trim();
    };
    await reply();
    for (const command of ['EHLO client.example', 'MAIL FROM:<a@example.org>']) {
      socket.write(`${command}\r\n`);
      assert.match(await reply(), /^250 /, command);
    }
    socket.write('RCPT TO:<r@elsewhere.example>\r\n');
    const rcpt = await reply();
    socket.write('QUIT\r\n');
    await new Promise((resolve) => socket.once('close', resolve));
    return rcpt;
  }

  const { skip } = needsPostfix();
  let s: TestServer;
  let port = 0;
  let peers: PostfixPolicy | undefined;

  before(async () => {
    if (skip) return;
    peers = await startPostfixPolicy('sameport', {}, (p) => [
      // One smtpd process: every session is served by it, on its one policy connection.
      `127.0.0.1:${p} inet n - n - 1 smtpd -o smtpd_recipient_restrictions=check_policy_service,unix:private/postern,permit_mynetworks,reject`,
    ], { 'connect.js': connectScript });
    ({ s, port } = peers);
  });
  after(() => peers?.stop());

  test('behind a real Postfix, sessions from one client port each run the connect script', { skip, timeout: 60_000 }, async () => {
    const localPort = await freePort();
    const replies: string[] = [];
    for (let i = 0; i < 3; i++) replies.push(await session(port, localPort));
    assert.deepEqual(replies.map((r) => r.slice(0, 3)), ['250', '450', '450'], replies.join('\n'));
  });

  test('over the policy protocol: a session\'s transactions share its connect verdict; a next session from that port does not', async () => {
    const t = await startTestServer({ config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n', scripts: { 'connect.js': connectScript } });
    try {
      const c = await PolicyClient.connect({ port: Number(t.policyAddresses.get('main')!.split(':').pop()) });
      const ask = async (attrs: Record<string, string | number>) => (await c.ask(rcptRequest(attrs))).replace(/^action=/, '');
      // Session 1: two transactions (instances numbered 0 and 1 by Postfix), two recipients in the first.
      for (const instance of ['36b3.6b1696b0.e95f1.0', '36b3.6b1696b0.e95f1.0', '36b3.6b1696b0.ed060.1']) {
        assert.equal(await ask({ client_port: 40000, instance }), 'DUNNO', instance);
      }
      // Session 2 from the same port: its first transaction is numbered 0 again.
      assert.match(await ask({ client_port: 40000, instance: '36b3.6b1697c2.1f0a.0' }), /^DEFER_IF_PERMIT one session an hour/);
      const runs = t.logs.filter((l) => String(l.msg).startsWith('connect ran')).length;
      assert.equal(runs, 2);
      c.close();
    } finally {
      await t.stop();
    }
  });
});

describe('unknown-client-port', () => {
  // Without the client's port (Postfix before 3.0 sends no client_port; XCLIENT PORT=[UNAVAILABLE] makes it `unknown`),
  // the connect and helo verdicts, kept per client address and port, were kept for every later session of that client
  // on one smtpd process's policy connection: a connect script limiting a client to one session an hour (rate())
  // ran at its first session only, and the next ones were accepted with its verdict. Now, when the port is unknown,
  // they are kept per transaction (Postfix's instance) and a request that names none runs them again.
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
});

describe('vrfy-etrn-earlier-stages', () => {
  // Postfix asks the restriction lists at VRFY (smtpd_recipient_restrictions, and with smtpd_delay_reject = yes the
  // client, helo and sender lists first) and at ETRN (smtpd_etrn_restrictions, the client and helo lists first), with
  // protocol_state VRFY or ETRN. Those states have no hook of their own, and they were answered DUNNO before the
  // earlier stages were asked: a client the connect script rejects (a DNSBL listing, say) was refused its mail but
  // still had its VRFY answered, `252 2.0.0 <address>` or `550 5.1.1 ... User unknown`, and so could harvest addresses.
  // Now the connect and helo scripts decide those states first, as they do every other.
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
});

describe('delayed-restrictions', () => {
  // Postfix's protocol_state names the command being answered, not the restriction list that asks: with its default
  // smtpd_delay_reject = yes, a check_policy_service in smtpd_client_restrictions, smtpd_helo_restrictions or
  // smtpd_sender_restrictions is asked at RCPT, with protocol_state=RCPT. Each request ran only its state's hook, so a
  // connect, helo or mailfrom script's reject was answered DUNNO there (no rcptto script), and Postfix delivered the
  // mail the script refused (seen behind a real Postfix: a connect.js rejecting every client, the mail at the sink).
  // Now the earlier stages' scripts decide first, each once per SMTP session (connect, helo) or transaction (mailfrom).
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
});

describe('postfix-attributes', () => {
  // What a real Postfix smtpd sends a policy service about a client certificate, and what Postern makes of it:
  // the subject and issuer CN as xtext (SMTPD_POLICY_README: `ccert_issuer=Wietse+20Venema`), and fingerprints in
  // the digest of Postfix's smtpd_tls_fingerprint_digest, which need not be the service's.
  const skip = needsPostfix().skip || needs('swaks').skip;
  let pki: TestPki;
  let pf: PostfixInstance;
  let s: TestServer;
  let files: string;
  /** smtpd with smtpd_tls_fingerprint_digest = sha256 (the service's), and one left at md5. */
  let sha256Port: number;
  let md5Port: number;
  const client = { cert: '', key: '' };

  before(async () => {
    if (skip) return;
    pki = await makeTestPki();
    files = await mkdtemp(join(tmpdir(), 'postern-pf-attrs-'));
    await chmod(files, 0o755);
    await writeFile(join(files, 'server.pem'), (await readFile(pki.server.key, 'utf8')) + (await readFile(pki.server.cert, 'utf8')), { mode: 0o644 });
    // A CN that is an account name outside ASCII; the test CA's own CN ("Postern Test CA") has spaces.
    const jöran = await issueClientCertificate(pki.authorities.ca, { commonName: 'jöran@example.com', keyType: 'ecdsa' });
    await writeFile(client.cert = join(files, 'joran.crt'), jöran.cert);
    await writeFile(client.key = join(files, 'joran.key'), jöran.key);
    const policyPort = await freePort();
    sha256Port = await freePort();
    md5Port = await freePort();
    pf = await startPostfix('attrs', {
      smtpd_tls_security_level: 'may',
      smtpd_tls_chain_files: join(files, 'server.pem'),
      smtpd_tls_CAfile: pki.ca.cert,
      smtpd_tls_ask_ccert: 'yes',
      smtpd_tls_fingerprint_digest: 'sha256',
      smtpd_relay_restrictions: `check_policy_service inet:127.0.0.1:${policyPort}, reject_unauth_destination`,
    }, [`127.0.0.1:${sha256Port} inet n - n - - smtpd`,
      // What Postfix computes below compatibility_level 3.6 when main.cf does not say.
      `127.0.0.1:${md5Port} inet n - n - - smtpd -o smtpd_tls_fingerprint_digest=md5`]);
    s = await startTestServer({
      config: `
policyServices:
  - name: postfix
    listen: 127.0.0.1:${policyPort}
    authoritative: true
    certificateIdentity: { field: CN }
    relayClientCertificatesTable: relay_clientcerts
tables: { relay_clientcerts: ./relay_clientcerts }
`,
      // An md5 relay_clientcerts kept from before compatibility_level 3.6, while Postfix now sends sha256.
      files: { relay_clientcerts: `${pki.clients.alice.fingerprintMd5.toUpperCase().match(/../g)!.join(':')}   laptop.example\n` },
      scripts: {
        'rcptto.ts': `
export default function (ctx) {
  const cert = ctx.connection.clientCertificate;
  log('subject=' + cert?.subject.CN + ' dn=' + cert?.subject.dn + ' issuer=' + cert?.issuer.CN + ' identity=' + ctx.connection.certificateIdentity);
  return ctx.connection.certificateIdentity ? accept() : reject('no certificate identity', { code: 554 });
}`,
      },
    }).catch(async (err: unknown) => { await pf.stop(); throw err; });
  });
  after(async () => {
    await s?.stop();
    await pf?.stop();
    if (files) await rm(files, { recursive: true, force: true });
  });

  const swaks = (port: number) => run('swaks', ['--server', '127.0.0.1', '--port', String(port), '--tls', '--ehlo', 'laptop.example',
    '--from', 'jöran@example.com', '--to', 'r@elsewhere.example', '--quit-after', 'RCPT', '--tls-cert', client.cert, '--tls-key', client.key]);

  test('the CNs Postfix sends as xtext are the certificate\'s names: a non-ASCII CN names its account, the issuer keeps its spaces', { skip }, async () => {
    const r = await swaks(sha256Port);
    assert.equal(r.code, 0, r.output);
    assert.match(r.stdout, /<~  250 2\.1\.5 Ok/);
    assert.ok(s.logs.some((l) => l.msg === 'subject=jöran@example.com dn=CN=jöran@example.com issuer=Postern Test CA identity=jöran@example.com'),
      JSON.stringify(s.logs.filter((l) => String(l.msg).startsWith('subject='))));
  });

  test('fingerprints in another digest than fingerprintDigest: the certificate is ignored, and the log says which digest Postfix used', { skip }, async () => {
    const r = await swaks(md5Port);
    assert.match(r.stdout, /<~\* 554 .*no certificate identity/, r.output);
    const warning = () => s.logs.find((l) => l.level === 40 && /ccert_fingerprint is an md5 digest, but fingerprintDigest is sha256/.test(String(l.msg)));
    await until('the digest warning', () => warning() !== undefined);
    assert.match(String(warning()!.msg), /smtpd_tls_fingerprint_digest/);
    // Once: Postfix sends the same in every request.
    await swaks(md5Port);
    assert.equal(s.logs.filter((l) => /fingerprintDigest is sha256/.test(String(l.msg))).length, 1);
  });

  test('a relay table in another digest than fingerprintDigest is warned about at start: its keys can never match', { skip }, () => {
    const warning = s.logs.find((l) => l.level === 40 && /relay table relay_clientcerts .* can never match/.test(String(l.msg)));
    assert.ok(warning, JSON.stringify(s.logs.filter((l) => l.level === 40)));
    assert.match(String(warning.msg), new RegExp(`${pki.clients.alice.fingerprintMd5} \\(md5\\).*fingerprintDigest sha256`));
    assert.match(String(warning.msg), /postern\.yaml:\d+:\d+: policyServices\[0\]\.relayClientCertificatesTable/);
  });
});

describe('hold', () => {
  // A data script's accept({ hold: reason }) asked by Postfix (check_policy_service): the message must go to
  // Postfix's hold queue, as on a listener it stays held in Postern's. access(5) says that with `HOLD <text>`.
  // It was answered `DUNNO` (an accept without header edits), so a quarantine script behind Postfix let the
  // message through to its next hop. A hold together with header edits cannot be one access(5) answer: the
  // failure action, never a DUNNO that drops the hold.
  const DATA_SCRIPT = `
export default function (ctx) {
  const who = ctx.transaction.sender.localPart;
  if (who === 'spam') return accept({ hold: 'spam score 7' });
  if (who === 'tagged') return accept({ hold: 'spam score 7', headers: [{ op: 'add', name: 'X-Spam-Score', value: '7' }] });
  return accept();
}`;

  test('over the policy protocol: a hold is HOLD <reason>; a hold with a header edit is the failure action', async () => {
    const s = await startTestServer({
      config: `
policyServices:
  - name: main
    listen: 127.0.0.1:0
  - name: authoritative
    listen: 127.0.0.1:0
    authoritative: true
`,
      scripts: { 'data.ts': DATA_SCRIPT },
    });
    try {
      for (const name of ['main', 'authoritative']) {
        const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get(name)!.split(':').pop()) });
        for (const state of ['DATA', 'END-OF-MESSAGE']) {
          const ask = (sender: string) => c.ask(rcptRequest({ protocol_state: state, sender, size: 100 }));
          assert.equal(await ask('spam@example.org'), 'action=HOLD spam score 7', `${name} at ${state}`);
          assert.equal(await ask('tagged@example.org'), 'action=DEFER_IF_PERMIT Service temporarily unavailable', `${name} at ${state}: hold + header`);
          assert.equal(await ask('ham@example.org'), name === 'main' ? 'action=DUNNO' : 'action=OK', `${name} at ${state}: no hold`);
        }
        c.close();
      }
      assert.ok(s.logs.some((l) => l.level === 50 && /a hold and header edits/.test(String(l.msg))), 'the failure is logged with why');
    } finally {
      await s.stop();
    }
  });

  const skip = needsPostfix().skip || needs('swaks').skip;
  let pki: TestPki;
  let pf: PostfixInstance;
  let sink: SmtpSink;
  let s: TestServer;
  let dataPort: number;
  let endOfDataPort: number;
  let files: string;

  before(async () => {
    if (skip) return;
    pki = await makeTestPki();
    sink = await startSmtpSink();
    files = await mkdtemp(join(tmpdir(), 'postern-pf-hold-'));
    await chmod(files, 0o755);
    await writeFile(join(files, 'server.pem'), (await readFile(pki.server.key, 'utf8')) + (await readFile(pki.server.cert, 'utf8')), { mode: 0o644 });
    dataPort = await freePort();
    endOfDataPort = await freePort();
    pf = await startPostfix('hold', {
      relayhost: `[127.0.0.1]:${sink.port}`,
      smtp_tls_security_level: 'none',
      smtpd_relay_restrictions: 'permit_mynetworks, reject',
      smtpd_data_restrictions: 'check_policy_service unix:private/postern',
      postern_end_of_data: 'check_policy_service unix:private/postern',
    }, [`127.0.0.1:${dataPort} inet n - n - - smtpd`,
      `127.0.0.1:${endOfDataPort} inet n - n - - smtpd -o smtpd_data_restrictions= -o smtpd_end_of_data_restrictions=$postern_end_of_data`]);
    s = await startTestServer({
      config: `
policyServices:
  - name: postfix
    listen: ${JSON.stringify(`unix:${join(pf.dir, 'spool', 'private', 'postern')}`)}
    socket: { owner: postfix, mode: '0660' }
`,
      scripts: { 'data.ts': DATA_SCRIPT },
    }).catch(async (err: unknown) => { await pf.stop(); throw err; });
  });
  after(async () => {
    await s?.stop();
    await pf?.stop();
    await sink?.stop();
    if (files) await rm(files, { recursive: true, force: true });
  });

  const swaks = (from: string, port: number, subject: string) => run('swaks', ['--server', '127.0.0.1', '--port', String(port),
    '--ehlo', 'client.example', '--from', from, '--to', 'r@elsewhere.example', '--header', `Subject: ${subject}`]);

  test('behind a real Postfix, a held message is on Postfix\'s hold queue, not at its next hop', { skip, timeout: 120_000 }, async () => {
    const held = async (): Promise<number> => ((await run('postqueue', ['-c', pf.etc, '-p'])).stdout.match(/^[0-9A-F]+!/gm) ?? []).length;
    let expected = 0;
    for (const [port, where] of [[dataPort, 'data'], [endOfDataPort, 'end-of-data']] as const) {
      const r = await swaks('spam@example.org', port, `held at ${where}`);
      assert.equal(r.code, 0, r.output); // Postfix accepts it (250), as a listener does
      // cleanup puts a HOLD message in the hold queue before smtpd answers 250: it is there now.
      assert.equal(await held(), ++expected, `on hold after the 250 (${where}):\n${(await run('postqueue', ['-c', pf.etc, '-p'])).stdout}\n${await pf.log()}`);
      // A message that is not held goes through the same Postfix to the sink.
      const ham = await swaks('ham@example.org', port, `delivered at ${where}`);
      assert.equal(ham.code, 0, ham.output);
      await sink.waitFor(new RegExp(`Subject: delivered at ${where}`));
      assert.ok(!(await sink.messages()).some((m) => m.includes(`Subject: held at ${where}`)), `the held message (${where}) never reached the next hop`);
    }
  });
});

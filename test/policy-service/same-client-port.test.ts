// The connect and helo verdicts are kept per SMTP session, told apart by the client's address and port. A client
// may bind its port: connecting again from the same one, to the same smtpd process (whose policy connection lives
// on), it was the same session to the service, and took the first session's verdict. Behind a real Postfix, a
// connect script allowing one session an hour per client ran once for three sessions from one port, and all three
// were accepted. Now a request of a session's first transaction (Postfix's instance numbers it 0) other than the
// one the verdict was kept in runs the script again.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { freePort, needsPostfix } from '../helpers/postfix.ts';
import { startPostfixPolicy, type PostfixPolicy } from '../helpers/postfix-policy.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

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

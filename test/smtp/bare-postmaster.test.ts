// RFC 5321 §4.5.1: every SMTP server must accept mail for the bare `postmaster` (no domain, any case),
// whatever the client may relay. As Postfix (postmaster@$myorigin), Postern rewrites it to
// postmaster@<first of localDomains>, else postmaster@<hostname>: that is what the relay rule, a rcptto
// script and the spool see. Real clients: swaks (RCPT stage) and python smtplib (a whole message, then
// the spooled envelope is read back).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, type TestServer } from '../helpers/postern.ts';

const run = promisify(execFile);
const swaksFound = spawnSync('sh', ['-c', 'command -v swaks']).status === 0;
const needsSwaks = { skip: swaksFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'swaks not installed' };

const listener = `
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`;
let local: TestServer; // localDomains, no scripts
let bare: TestServer; // no localDomains (hostname), a rcptto script

before(async () => {
  local = await startTestServer({ config: `hostname: mx.example.net\nlocalDomains: [Example.COM, other.example]\n${listener}` });
  bare = await startTestServer({
    config: `hostname: mx.example.net\n${listener}`,
    scripts: { 'rcptto.ts': 'export default (ctx) => ctx.address.localPart === "postmaster" ? accept({ text: `saw ${ctx.address.address} ${ctx.builtin.reason}` }) : undefined' },
  });
});
after(async () => { await local?.stop(); await bare?.stop(); });

async function swaksRcpt(server: TestServer, to: string): Promise<{ code: number; out: string }> {
  const args = ['--server', '127.0.0.1', '--port', String(server.port('mx')), '--ehlo', 'client.example',
    '--from', 'sender@elsewhere.example', '--to', to, '--quit-after', 'RCPT'];
  return run('swaks', args).then((r) => ({ code: 0, out: r.stdout }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }));
}

/** python smtplib: MAIL, RCPT TO:<rcpt>, DATA; prints the RCPT reply and the DATA reply. */
async function smtplibSend(server: TestServer, rcpt: string): Promise<{ rcpt: string; data: string }> {
  const py = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.ehlo('client.example')
s.mail('sender@elsewhere.example')
c, m = s.rcpt(sys.argv[2]); print(c, m.decode())
c, m = s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n'); print(c, m.decode())
s.quit()
`;
  const { stdout } = await run('python3', ['-c', py, String(server.port('mx')), rcpt]);
  const [rcptLine, dataLine] = stdout.trim().split('\n');
  return { rcpt: rcptLine!, data: dataLine! };
}

async function spooledRecipients(server: TestServer, dataReply: string): Promise<string[]> {
  const id = /queued as (\S+)/.exec(dataReply)?.[1];
  assert.ok(id, dataReply);
  const { envelope } = await server.runtime.spool.readForDelivery(id);
  return envelope.recipients.map((r) => r.address);
}

test('swaks: RCPT TO:<postmaster> and <PostMaster> are accepted on a listener with no relay rights; another domainless recipient is not', needsSwaks, async () => {
  for (const to of ['postmaster', 'PostMaster']) {
    const r = await swaksRcpt(local, to);
    assert.equal(r.code, 0, `accepted:\n${r.out}`);
  }
  const other = await swaksRcpt(local, 'victim');
  assert.notEqual(other.code, 0, other.out);
  const relay = await swaksRcpt(local, 'postmaster@elsewhere.example');
  assert.equal(relay.code, 24, `postmaster of another domain is still a relay:\n${relay.out}`);
  assert.match(relay.out, /554 5\.7\.1 <postmaster@elsewhere\.example>: Relay access denied/);
});

test('python smtplib: the bare postmaster is spooled as postmaster@<first local domain>', async () => {
  const r = await smtplibSend(local, 'Postmaster');
  assert.match(r.rcpt, /^250 /);
  assert.match(r.data, /^250 /);
  assert.deepEqual(await spooledRecipients(local, r.data), ['postmaster@example.com']);
});

test('python smtplib: without localDomains, postmaster@<hostname>; a rcptto script sees the rewritten address and decides', async () => {
  const r = await smtplibSend(bare, 'postmaster');
  assert.equal(r.rcpt, '250 2.1.5 saw postmaster@mx.example.net postmaster');
  assert.match(r.data, /^250 /);
  assert.deepEqual(await spooledRecipients(bare, r.data), ['postmaster@mx.example.net']);
});

test('a repeated <postmaster> (once bare, once written out) is one recipient', async () => {
  const py = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.ehlo('client.example')
s.mail('sender@elsewhere.example')
print(s.rcpt('postmaster')[0], s.rcpt('postmaster@example.com')[0], s.rcpt('POSTMASTER')[0])
c, m = s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n'); print(c, m.decode())
s.quit()
`;
  const { stdout } = await run('python3', ['-c', py, String(local.port('mx'))]);
  const [codes, data] = stdout.trim().split('\n');
  assert.equal(codes, '250 250 250');
  assert.deepEqual(await spooledRecipients(local, data!), ['postmaster@example.com']);
});

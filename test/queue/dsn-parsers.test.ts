// Bounces as others read them: Python's email package (a real MIME parser, the one bounce processors such as
// flufl.bounce build on) parses what buildDsn writes for hostile inputs — a next hop's reply in another script,
// a long hostname, a sender at an IDN domain — and finds a multipart/report of three parts, one delivery-status
// block per recipient, no defects, 7-bit lines within 998 characters and a boundary within RFC 2046's 70. And a
// bounce storm: a message to 500 recipients that all fail makes one report, not one a recipient or a transaction.
// And the bounce to a sender at an IDN domain reaches a next hop without 8BITMIME (its To: was raw UTF-8: refused
// there, 5.6.3, and discarded as the null sender's).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildDsn, type DsnInput } from '../../engine/queue/dsn.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';

const run = promisify(execFile);
const scratch = useScratchDir('postern-dsn-parsers-');

const READ = `
import sys, json, email
from email import policy
raw = open(sys.argv[1], 'rb').read()
m = email.message_from_bytes(raw, policy=policy.default)
defects = [f'{p.get_content_type()}: {d!r}' for p in m.walk() for d in p.defects]
to = m['To']
defects += [f'To: {d!r}' for d in to.defects]
blocks = []
for p in m.walk():
    if p.get_content_type() == 'message/delivery-status':
        blocks = [dict(b.items()) for b in p.get_payload()]
lines = raw.split(b'\\r\\n')
print(json.dumps({
    'type': m.get_content_type(), 'reportType': m.get_param('report-type'), 'boundary': m.get_boundary(),
    'parts': [p.get_content_type() for p in m.get_payload()], 'blocks': blocks, 'defects': defects,
    'to': [a.addr_spec for a in to.addresses], 'eightBit': any(b > 127 for b in raw), 'longest': max(len(l) for l in lines),
}))
`;

interface Read { type: string; reportType: string; boundary: string; parts: string[]; blocks: Array<Record<string, string>>; defects: string[]; to: string[]; eightBit: boolean; longest: number }

async function pythonReads(raw: Buffer): Promise<Read> {
  const file = await scratch.file(`dsn-${Math.random().toString(36).slice(2)}.eml`, raw);
  const { stdout } = await run('python3', ['-c', READ, file]);
  return JSON.parse(stdout) as Read;
}

const original = (sender: string): DsnInput['original'] => ({ id: '0mabcdefg1a2b3c4d5e', sender, receivedAt: '2026-01-01T00:00:00Z' });

test('a next hop\'s reply in another script, a long hostname, a sender at an IDN domain: Python reads a well-formed, 7-bit report', async () => {
  // A localized refusal (a next hop may answer in UTF-8), long enough to be clipped: each character is 8 when escaped.
  const localized = `550 5.1.1 ${'\u65e5\u672c\u8a9e\u306e\u30a8\u30e9\u30fc'.repeat(150)}`;
  const raw = buildDsn({
    hostname: 'reporting-host-with-a-long-name.mail.internal.example.org',
    original: original('info@m\u00fcnchen.example'),
    originalMessage: Buffer.from('From: info@xn--mnchen-3ya.example\r\nSubject: hi\r\n\r\nbody\r\n'),
    failed: [
      { recipient: 'a@x.test', status: '5.1.1', diagnostic: localized, remoteReply: true, remoteMta: 'mx.x.test[192.0.2.1]:25' },
      // Boundary- and header-looking text from a next hop: one line, inside its field.
      { recipient: 'b@x.test', status: '5.7.1', diagnostic: '550 5.7.1 --0mabcdefg1a2b3c4d5e Content-Type: text/html', remoteReply: true, remoteMta: 'mx.x.test[192.0.2.1]:25',
        // An ORCPT a client may give (500 characters): 4,000 as \x{65E5} escapes, with no place to fold.
        orcpt: `rfc822;${'\u65e5'.repeat(480)}@x.example` },
    ],
    expired: false,
  });
  const read = await pythonReads(raw);
  assert.deepEqual(read.defects, []);
  assert.equal(read.type, 'multipart/report');
  assert.equal(read.reportType, 'delivery-status');
  assert.deepEqual(read.parts, ['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
  assert.ok(read.boundary.length <= 70, `boundary of ${read.boundary.length} characters (RFC 2046: 70 at most; Dovecot keeps 80)`);
  assert.equal(read.eightBit, false, 'the bounce is 7-bit: a next hop without 8BITMIME takes it');
  assert.ok(read.longest <= 998, `a line of ${read.longest} characters`);
  assert.deepEqual(read.to, ['info@xn--mnchen-3ya.example']);
  assert.deepEqual(read.blocks.slice(1).map((b) => [b['Final-Recipient'], b.Action, b.Status]), [['rfc822; a@x.test', 'failed', '5.1.1'], ['rfc822; b@x.test', 'failed', '5.7.1']]);
  const diagnostic = read.blocks[1]!['Diagnostic-Code']!;
  assert.match(diagnostic, /^smtp; 550 5\.1\.1 (\\x\{[0-9A-F]+\})+\.\.\.$/, 'clipped between escapes, not inside one');
  assert.equal(read.blocks[2]!['Diagnostic-Code'], 'smtp; 550 5.7.1 --0mabcdefg1a2b3c4d5e Content-Type: text/html');
  assert.equal(read.blocks[2]!['Original-Recipient'], undefined, 'an ORCPT too long for one line is left out (it is optional)');
});

test('a bounce storm: one message to 500 recipients the next hop refuses (100 a transaction) gets one report of 500, which Python reads', { timeout: 120_000 }, async () => {
  const sink = await startSink({
    maxRecipients: 100,
    decide: (stage, address) => (stage === 'rcpt' && address.startsWith('gone') ? { code: 550, text: `5.1.1 <${address}>: Recipient address rejected: User unknown` } : null),
  });
  const s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test', listeners: [testListener('in', { limits: { maxRecipients: 500 } })], localDomains: ['example.test'],
      delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }),
      // Not the 100 ms default: on a loaded machine one of the 500 rcptto calls outran it, its RCPT got 451 4.3.0
      // (failing closed, as it must), and the message went in with 499 recipients (send() now fails on that 451).
      sandbox: { timeoutMs: 30_000 },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const to = Array.from({ length: 500 }, (_, i) => `gone${i}@${['a', 'b', 'c', 'd', 'e'][i % 5]}.example`);
    const id = await s.send('sender@example.test', to);
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(e.outcomes.length, 500, 'every recipient was taken at RCPT');
    assert.ok(e.removed && e.bounceId, 'every recipient bounced in one attempt');
    await until('the bounce delivered', () => sink.messages.some((m) => m.from === '' && m.to[0] === 'sender@example.test'), { timeoutMs: 60_000 });
    await s.scans(1);
    const bounces = sink.messages.filter((m) => m.from === '');
    assert.equal(bounces.length, 1, 'one report, not one a recipient or a transaction');
    const read = await pythonReads(bounces[0]!.data);
    assert.deepEqual(read.defects, []);
    assert.equal(read.blocks.length, 501, 'the per-message block and one for each recipient');
    assert.deepEqual(new Set(read.blocks.slice(1).map((b) => b['Final-Recipient'])), new Set(to.map((r) => `rfc822; ${r}`)));
    assert.ok(read.blocks.slice(1).every((b) => b.Action === 'failed' && b.Status === '5.1.1'));
    assert.ok(read.longest <= 998 && !read.eightBit);
  } finally {
    await s.stop();
    await sink.close();
  }
});

test('the bounce to a sender at an IDN domain reaches a next hop that offers neither 8BITMIME nor SMTPUTF8 (its To: in A-labels), instead of being refused and discarded', async () => {
  const seen = { rcpt: [] as string[], messages: [] as string[] };
  const peer = await startScriptedPeer({
    ehlo: (sock) => { sock.write('250 peer\r\n'); return 'answered'; },
    rcpt: (sock, line) => {
      seen.rcpt.push(line);
      if (/<gone@/.test(line)) { sock.write('550 5.1.1 no such user\r\n'); return 'answered'; }
    },
    endOfData: (_sock, message) => { seen.messages.push(message); },
  });
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [3600] }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    const id = await sendWithParams(c, '<info@m\u00fcnchen.example> SMTPUTF8', ['<gone@example.net>'], 'From: info@xn--mnchen-3ya.example\r\nSubject: hi\r\n\r\nhello\r\n');
    await c.quit();
    const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
    const b = await s.nextAttempt((x) => x.id === e.bounceId, { timeoutMs: 30_000, past: true });
    assert.deepEqual(b.outcomes.map((o) => [o.recipient, o.status, o.reply]), [['info@m\u00fcnchen.example', 'delivered', '250 2.0.0 queued']]);
    assert.ok(seen.rcpt.includes('RCPT TO:<info@xn--mnchen-3ya.example>'), seen.rcpt.join(' | '));
    assert.match(seen.messages.at(-1)!, /^To: <info@xn--mnchen-3ya\.example>\r$/m);
  } finally {
    await s.stop();
    peer.close();
  }
});

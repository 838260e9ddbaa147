// The bounce of a hostile message, as a real Postfix takes it and Python reads it. A spammer's message — thousands
// of header fields of UTF-8 text, a header line of 5,000 characters, a 3 MB 8-bit body, RET=FULL, an ENVID and an
// ORCPT written in xtext with `+` and `=` — goes through Postern to a private Postfix, which refuses its recipient
// (550); the bounce goes back through the same Postfix to smtp-sink. Postfix accepts it, and the copy smtp-sink keeps
// is a well-formed multipart/report: 7-bit, lines within 998 characters, one block per recipient with its
// Original-Recipient, the header only (the message is over the size returned whole), no larger than a next hop takes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { needsPostfix, freePort, startPostfix, startSmtpSink } from '../helpers/postfix.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const run = promisify(execFile);
const scratch = useScratchDir('postern-dsn-postfix-');
const skip = needsPostfix();

const READ = `
import sys, json, email
from email import policy
raw = open(sys.argv[1], 'rb').read()
m = email.message_from_bytes(raw, policy=policy.default)
defects = [f'{p.get_content_type()}: {d!r}' for p in m.walk() for d in p.defects]
blocks = []
for p in m.walk():
    if p.get_content_type() == 'message/delivery-status':
        blocks = [dict(b.items()) for b in p.get_payload()]
lines = raw.split(b'\\n')
print(json.dumps({
    'type': m.get_content_type(), 'parts': [p.get_content_type() for p in m.get_payload()], 'blocks': blocks,
    'defects': defects, 'eightBit': any(b > 127 for b in raw), 'longest': max(len(l.rstrip(b'\\r')) for l in lines),
}))
`;

test('the bounce of a message with thousands of UTF-8 header fields, a 5,000-character line and a 3 MB body: Postfix takes it, Python reads it', { ...skip, timeout: 180_000 }, async (t) => {
  const smtpSink = await startSmtpSink();
  t.after(() => smtpSink.stop());
  const smtpdPort = await freePort();
  const pf = await startPostfix('bounce-peer', {
    relayhost: `[127.0.0.1]:${smtpSink.port}`,
    smtp_tls_security_level: 'none',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    smtpd_recipient_restrictions: 'check_recipient_access inline:{ { nobody@dest.test = 550 5.1.1 User unknown in virtual mailbox table } }, permit',
  }, [`127.0.0.1:${smtpdPort} inet n - n - - smtpd`]);
  t.after(() => pf.stop());
  const s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test', listeners: [testListener('in')], localDomains: ['example.test'],
      delivery: smarthostDelivery(smtpdPort, { retrySchedule: [3600] }),
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  t.after(() => s.stop());
  const fields = Array.from({ length: 3000 }, (_, i) => `X-Spam-${i}: gr\u00fc\u00dfe aus M\u00fcnchen \u65e5\u672c ${i}\r\n`).join('');
  const message = `From: sender@example.test\r\nTo: nobody@dest.test\r\nSubject: hostile\r\n${fields}X-Long: ${'a'.repeat(5000)}\r\n\r\n`
    + `${'caf\u00e9 '.repeat(20)}\r\n`.repeat(30_000);
  const c = await SmtpTestClient.connect(s.port());
  await c.hello();
  const id = await sendWithParams(c, '<sender@example.test> BODY=8BITMIME RET=FULL ENVID=spam+2Brun+3D1', ['<nobody@dest.test> NOTIFY=FAILURE ORCPT=rfc822;nobody+2Balias@dest.test'], message);
  await c.quit();
  const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 60_000, past: true });
  assert.deepEqual(e.outcomes.map((o) => [o.status, o.reply.slice(0, 9)]), [['permanent', '550 5.1.1']]);
  assert.ok(e.bounceId, 'a bounce spooled');
  const b = await s.nextAttempt((x) => x.id === e.bounceId, { timeoutMs: 60_000, past: true });
  assert.deepEqual(b.outcomes.map((o) => [o.recipient, o.status]), [['sender@example.test', 'delivered']], 'Postfix took the bounce');
  const dumped = await smtpSink.waitFor(/multipart\/report/, 60_000);
  const raw = Buffer.from(dumped.slice(dumped.search(/^Received: /m)), 'latin1');
  const file = await scratch.file('bounce.eml', raw);
  const read = JSON.parse((await run('python3', ['-c', READ, file], { maxBuffer: 64 * 1024 * 1024 })).stdout) as {
    type: string; parts: string[]; blocks: Array<Record<string, string>>; defects: string[]; eightBit: boolean; longest: number;
  };
  assert.equal(read.type, 'multipart/report');
  assert.deepEqual(read.parts, ['text/plain', 'message/delivery-status', 'text/rfc822-headers'], 'the header only: the message is over the size returned whole');
  assert.deepEqual(read.defects, []);
  assert.ok(!read.eightBit && read.longest <= 998, `7-bit, lines within 998 characters (longest ${read.longest})`);
  assert.equal(read.blocks.length, 2);
  assert.equal(read.blocks[0]!['Original-Envelope-Id'], 'spam+run=1');
  assert.equal(read.blocks[1]!['Original-Recipient'], 'rfc822;nobody+alias@dest.test');
  assert.equal(read.blocks[1]!['Final-Recipient'], 'rfc822; nobody@dest.test');
  assert.equal(read.blocks[1]!.Action, 'failed');
  assert.equal(read.blocks[1]!.Status, '5.1.1');
  assert.ok(raw.length < 512 * 1024, `the bounce is ${raw.length} bytes`);
});

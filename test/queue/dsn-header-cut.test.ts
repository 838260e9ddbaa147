// A bounce returns the message's header section up to 64 KB. A longer one was cut at the 65,536th byte: inside a
// header field (its name alone, or a folded field without its last lines), inside a UTF-8 character (the returned
// header then not UTF-8), or between a CR and its LF (a bare CR, then a CRLF of its own). The returned header is read
// as readers read it, Python's email package decoding the text/rfc822-headers part: valid UTF-8, no bare CR, and every
// field one of the message's own, whole. Cut at each kind of point (built with buildDsn), and end to end: a message of
// long UTF-8 fields through Postern to a real Postfix that refuses it, and its bounce back through that Postfix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildDsn } from '../../engine/queue/dsn.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { needsPostfix, freePort, startPostfix, startSmtpSink } from '../helpers/postfix.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';

const run = promisify(execFile);
const scratch = useScratchDir('postern-dsn-header-cut-');
const LIMIT = 64 * 1024;

const READ = `
import sys, json, email
from email import policy
raw = open(sys.argv[1], 'rb').read()
m = email.message_from_bytes(raw, policy=policy.default)
defects = [f'{p.get_content_type()}: {d!r}' for p in m.walk() for d in p.defects]
part = [p for p in m.walk() if p.get_content_type() == 'text/rfc822-headers'][0]
returned = part.get_payload(decode=True)
try:
    returned.decode('utf-8')
    utf8 = True
except UnicodeDecodeError as e:
    utf8 = str(e)
lines = returned.split(b'\\r\\n')
print(json.dumps({
    'defects': defects, 'utf8': utf8, 'bareCr': any(b'\\r' in l for l in lines),
    'returned': returned.decode('latin1'),
}))
`;

interface Read { defects: string[]; utf8: true | string; bareCr: boolean; returned: string }

async function pythonReads(raw: Buffer): Promise<Read> {
  const file = await scratch.file(`dsn-${Math.random().toString(36).slice(2)}.eml`, raw);
  return JSON.parse((await run('python3', ['-c', READ, file], { maxBuffer: 64 * 1024 * 1024 })).stdout) as Read;
}

/** The fields of a header section (bytes as latin1), each with its folded lines. */
function fields(header: string): string[] {
  return header.replace(/\r\n$/, '').split(/\r\n(?![ \t])/);
}

/** What a reader finds wrong in the returned header of `message`'s bounce; `added`: fields the spool added to it. */
async function returnedHeaderFaults(raw: Buffer, message: Buffer, added: (field: string) => boolean = () => false): Promise<string[]> {
  const read = await pythonReads(raw);
  const own = new Set(fields(message.subarray(0, message.indexOf('\r\n\r\n') + 2).toString('latin1')));
  const returned = fields(read.returned);
  return [
    ...read.defects,
    ...(read.utf8 === true ? [] : [`not UTF-8: ${read.utf8}`]),
    ...(read.bareCr ? ['a bare CR'] : []),
    ...returned.filter((f) => !own.has(f) && !added(f)).map((f) => `not a field of the message, whole: …${JSON.stringify(f.slice(-60))}`),
    ...(returned.length ? [] : ['no field returned']),
  ];
}

/** A header section of `field(i)` lines after a padding field whose length puts byte LIMIT - 1 where `at` says. */
function headerWithCutAt(field: (i: number) => string, at: (message: Buffer) => boolean): Buffer {
  for (let pad = 0; pad < 2000; pad++) {
    let text = `Received: from client.example by postern.test; Thu, 1 Jan 2026 00:00:00 +0000\r\nX-Pad: ${'p'.repeat(pad + 1)}\r\n`;
    for (let i = 0; Buffer.byteLength(text) < 2 * LIMIT; i++) text += field(i);
    const message = Buffer.from(`${text}\r\nbody\r\n`);
    if (at(message)) return message;
  }
  throw new Error('no padding puts the cut there');
}

const original = { id: '0mabcdefg1a2b3c4d5e', sender: 'sender@example.test', receivedAt: '2026-01-01T00:00:00Z' };
const failed = [{ recipient: 'nobody@dest.test', status: '5.1.1', diagnostic: '550 5.1.1 User unknown', remoteReply: true, remoteMta: 'mx.dest.test[192.0.2.1]:25' }];

const cuts: Array<{ name: string; message: Buffer }> = [
  {
    name: 'inside a UTF-8 character',
    message: headerWithCutAt((i) => `X-Text-${i}: gr\u00fc\u00dfe \u65e5\u672c\u8a9e ${'\u00e9'.repeat(30)}\r\n`, (m) => (m[LIMIT]! & 0xc0) === 0x80),
  },
  {
    name: 'between a CR and its LF',
    message: headerWithCutAt((i) => `X-Ascii-${i}: ${'a'.repeat(60 + (i % 7))}\r\n`, (m) => m[LIMIT - 1] === 0x0d),
  },
  {
    name: 'inside a folded field, at a line end',
    message: headerWithCutAt((i) => `X-Folded-${i}: first line of the field\r\n\tsecond line ${'f'.repeat(i % 13)}\r\n\tthird line\r\n`,
      (m) => m[LIMIT - 1] === 0x0a && m[LIMIT] === 0x09),
  },
];

for (const { name, message } of cuts) {
  test(`a header over 64 KB cut ${name}: the bounce returns whole fields of valid UTF-8, as Python reads them`, async () => {
    const raw = buildDsn({ hostname: 'postern.test', original, originalMessage: message, failed, expired: false });
    assert.deepEqual(await returnedHeaderFaults(raw, message), []);
  });
}

test('end to end: the bounce of a message with 100 KB of UTF-8 header fields, through a real Postfix both ways, returns whole fields', { ...needsPostfix(), timeout: 180_000 }, async (t) => {
  const smtpSink = await startSmtpSink();
  t.after(() => smtpSink.stop());
  const smtpdPort = await freePort();
  const pf = await startPostfix('header-cut-peer', {
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
  // Fields of 3-byte characters, 700 bytes each: Postern's own Received line puts the 64 KB mark where it may, and it
  // falls inside a field (and two times in three inside a character).
  const fieldsText = Array.from({ length: 150 }, (_, i) => `X-Text-${i}: ${'\u65e5\u672c\u8a9e'.repeat(77)}\r\n`).join('');
  const sent = `From: sender@example.test\r\nTo: nobody@dest.test\r\nSubject: long header\r\n${fieldsText}\r\nbody\r\n`;
  const c = await SmtpTestClient.connect(s.port());
  await c.hello();
  const id = await sendWithParams(c, '<sender@example.test> BODY=8BITMIME', ['<nobody@dest.test>'], sent);
  await c.quit();
  const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 60_000, past: true });
  assert.ok(e.bounceId, 'a bounce spooled');
  const b = await s.nextAttempt((x) => x.id === e.bounceId, { timeoutMs: 60_000, past: true });
  assert.deepEqual(b.outcomes.map((o) => [o.recipient, o.status]), [['sender@example.test', 'delivered']], 'Postfix took the bounce');
  const dumped = await smtpSink.waitFor(/multipart\/report/, 60_000);
  // smtp-sink's dump has LF line ends: CRLF again, as the bounce went out.
  const raw = Buffer.from(dumped.slice(dumped.search(/^Received: /m)).replace(/\r?\n/g, '\r\n'), 'latin1');
  // The fields Postern was sent, and the Received line it added first.
  assert.deepEqual(await returnedHeaderFaults(raw, Buffer.from(sent), (f) => /^Received: from /.test(f) && !/X-Text/.test(f)), []);
});

// The text part breaks a word over 900 characters (a next hop's reply) into pieces: cut between UTF-16 code units, a
// character outside the BMP (an emoji) was split into two lone surrogates, each written as U+FFFD.
test('a next hop\'s reply with a word of 600 emoji: the text part cuts it between characters, none replaced by U+FFFD', async () => {
  const reply = `550 5.7.1 x${'\u{1F600}'.repeat(600)}`; // the x: the cut at 900 code units falls inside a character
  const raw = buildDsn({ hostname: 'postern.test', original, originalMessage: Buffer.from('Subject: hi\r\n\r\nbody\r\n'), failed: [{ ...failed[0]!, diagnostic: reply }], expired: false });
  const file = await scratch.file('emoji.eml', raw);
  const { stdout } = await run('python3', ['-c', `
import sys, json, email
from email import policy
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=policy.default)
text = m.get_payload()[0].get_content()
print(json.dumps({ 'emoji': text.count('\\U0001F600'), 'replaced': text.count('\\ufffd') }))
`, file]);
  assert.deepEqual(JSON.parse(stdout), { emoji: 600, replaced: 0 });
});

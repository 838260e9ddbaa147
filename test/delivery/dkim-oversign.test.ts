// DKIM header addition (RFC 6376 §5.4.2, §8.15): a verifier takes the bottom-most instance of each field
// h= names, and a mail client shows the top one. A signature that lists each field only as often as it was
// present lets anyone on the path (or a recipient replaying the mail) add a second From:, Subject:, To:, or a
// Reply-To: the signed mail never had, above the signed one: the signature still verifies, DMARC passes for the
// signer's domain, and the reader sees the added one. Over-signing (each such field named once more in h= than
// it occurs) makes any added instance break the signature. A real next hop records the bytes; dkimpy
// (python3-dkim, independent of Postern) verifies them, before and after the addition.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { dkimKeyPair, verifyDkim } from '../helpers/dkim.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-dkim-oversign-');
let sink: Sink;
let s: DeliveryServer;
let records: Record<string, string>;

before(async () => {
  const rsa = dkimKeyPair('rsa');
  const ed = dkimKeyPair('ed25519');
  records = { 'sel._domainkey.example.com.': rsa.txt, 'ed._domainkey.example.org.': ed.txt };
  sink = await startSink();
  s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      listeners: [testListener('in')],
      delivery: smarthostDelivery(sink.port, {
        retrySchedule: [3600],
        dkim: {
          com: { domain: 'example.com', selector: 'sel', privateKey: await scratch.file('com.key', rsa.privateKey), senderDomains: ['example.com'] },
          org: { domain: 'example.org', selector: 'ed', privateKey: await scratch.file('org.key', ed.privateKey), senderDomains: ['example.org'] },
        },
      }),
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

const message = (from: string) => [
  `From: Boss <${from}>`,
  'To: <staff@example.net>',
  'Cc: <board@example.net>',
  'Subject: Quarterly numbers',
  'Date: Mon, 1 Jan 2024 09:00:00 +0000',
  'Message-ID: <q1@example.com>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'Numbers attached.',
  '',
].join('\r\n');

async function delivered(from: string): Promise<string> {
  const id = await s.send(from, ['staff@example.net'], message(from));
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  return sink.messages.find((m) => m.data.toString().includes(` id ${id}`))!.data.toString('latin1');
}

/** The copy with `field` added at the top of the header section, where a mail client reads it. */
const added = (copy: string, field: string) => Buffer.from(`${field}\r\n${copy}`, 'latin1');

const ADDITIONS = [
  'From: IT Support <it@attacker.example>',
  'Subject: Urgent: reset your password',
  'To: <victim@example.net>',
  'Cc: <victim@example.net>',
  'Reply-To: <collect@attacker.example>', // none in the signed message
  'Date: Tue, 2 Jan 2024 09:00:00 +0000',
  'Message-ID: <replayed@attacker.example>',
  'MIME-Version: 1.0',
  'Content-Type: text/html; charset=utf-8',
];

for (const [key, from] of [['RSA', 'boss@example.com'], ['Ed25519', 'boss@example.org']] as const) {
  test(`${key}: the copy verifies, and stops verifying once a second instance of a signed field is added above it`, async () => {
    const copy = await delivered(from);
    assert.deepEqual(await verifyDkim(Buffer.from(copy, 'latin1'), records), [true]);
    for (const field of ADDITIONS) {
      assert.deepEqual(await verifyDkim(added(copy, field), records), [false], `added ${field}`);
    }
    // A field no one reads for display (a trace field) may still be added by the path: the signature holds.
    assert.deepEqual(await verifyDkim(added(copy, 'X-Spam-Score: 0.1'), records), [true]);
  });
}

// A message with two From: fields is the other half of the same attack: a verifier and a DMARC check may take
// one From, the reader's client shows the other (RFC 7489 §6.6.1; mox refuses it at submission, rspamd does not
// sign it). Signing it would lend the domain's signature to an author it does not vouch for; a message without
// From: can never be signed (RFC 6376 §5.4). Both are bounced at once (5.6.0), not retried for days.
for (const [name, head] of [
  ['two From: fields', 'From: <boss@example.com>\r\nFrom: <ceo@bank.example>\r\n'],
  ['no From: field', 'Sender: <boss@example.com>\r\n'],
] as const) {
  test(`${name}: not signed, not sent, bounced at once (5.6.0)`, async () => {
    const before = sink.messages.length;
    const id = await s.send('boss@example.com', ['staff@example.net'], `${head}To: <staff@example.net>\r\nSubject: s\r\n\r\nbody\r\n`);
    const e = await s.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'permanent', e.outcomes[0]!.reply);
    assert.equal(e.outcomes[0]!.enhanced, '5.6.0');
    assert.match(e.outcomes[0]!.reply, /DKIM signing with delivery\.dkim\.com refused: the message has [02] From: header fields \(exactly one is signed, RFC 5322 §3\.6\)/);
    assert.equal(sink.messages.slice(before).filter((m) => m.to.includes('staff@example.net')).length, 0, 'nothing sent to the recipient');
  });
}

test('folded fields, and 8-bit (UTF-8) fields are signed as sent, and still over-signed', async () => {
  const head = [
    'From: =?utf-8?q?J=C3=B6rg?= <boss@example.com>',
    'Subject: a subject folded over\r\n   three lines,\twith tabs  \r\n\tand trailing spaces   ',
    'To: Zoë Ünal <staff@example.net>,\r\n Ana <ana@example.net>',
    'Content-Type: text/plain;\r\n\tcharset=utf-8',
  ].join('\r\n');
  const id = await s.send('boss@example.com', ['staff@example.net'], `${head}\r\n\r\nGrüße\r\n`);
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  const copy = sink.messages.find((m) => m.data.toString().includes(` id ${id}`))!.data;
  assert.ok(copy.includes(Buffer.from('Zoë Ünal')), 'the 8-bit field went as is');
  assert.deepEqual(await verifyDkim(copy, records), [true]);
  assert.deepEqual(await verifyDkim(Buffer.concat([Buffer.from('Subject: other\r\n'), copy]), records), [false]);
  assert.deepEqual(await verifyDkim(Buffer.from(copy.toString('latin1').replace('three lines', 'three  lines'), 'latin1'), records), [true], 'relaxed: spaces');
  assert.deepEqual(await verifyDkim(Buffer.from(copy.toString('latin1').replace('Ana', 'Bob'), 'latin1'), records), [false]);
});

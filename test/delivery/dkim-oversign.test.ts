// DKIM header addition (RFC 6376 §5.4.2, §8.15): a verifier takes the bottom-most instance of each field
// h= names, and a mail client shows the top one. A signature that lists each field only as often as it was
// present lets anyone on the path (or a recipient replaying the mail) add a second From:, Subject:, To:, or a
// Reply-To: the signed mail never had, above the signed one: the signature still verifies, DMARC passes for the
// signer's domain, and the reader sees the added one. Over-signing (each such field named once more in h= than
// it occurs) makes any added instance break the signature. A real next hop records the bytes; dkimpy
// (python3-dkim, independent of Postern) verifies them, before and after the addition.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery, deliveredCopy } from '../helpers/dkim-delivery.ts';

const setup = useSigningDelivery({
  com: { type: 'rsa', domain: 'example.com', selector: 'sel', senderDomains: ['example.com'] },
  org: { type: 'ed25519', domain: 'example.org', selector: 'ed', senderDomains: ['example.org'] },
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

const delivered = async (from: string): Promise<string> =>
  (await deliveredCopy(setup.server, setup.sink, from, ['staff@example.net'], message(from))).toString('latin1');

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
    assert.deepEqual(await verifyDkim(Buffer.from(copy, 'latin1'), setup.records), [true]);
    for (const field of ADDITIONS) {
      assert.deepEqual(await verifyDkim(added(copy, field), setup.records), [false], `added ${field}`);
    }
    // A field no one reads for display (a trace field) may still be added by the path: the signature holds.
    assert.deepEqual(await verifyDkim(added(copy, 'X-Spam-Score: 0.1'), setup.records), [true]);
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
    const { server: s, sink } = setup;
    const before = sink.messages.length;
    const id = await s.send('boss@example.com', ['staff@example.net'], `${head}To: <staff@example.net>\r\nSubject: s\r\n\r\nbody\r\n`);
    const e = await s.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'permanent', e.outcomes[0]!.reply);
    assert.equal(e.outcomes[0]!.enhanced, '5.6.0');
    assert.match(e.outcomes[0]!.reply, /DKIM signing with delivery\.dkim\.com refused: the message has [02] From: header fields \(exactly one is signed, RFC 5322 §3\.6\)/);
    assert.equal(sink.messages.slice(before).filter((m) => m.to.includes('staff@example.net')).length, 0, 'nothing sent to the recipient');
  });
}

test('folded fields and 8-bit (UTF-8) fields are signed as sent, and still over-signed', async () => {
  const head = [
    'From: =?utf-8?q?J=C3=B6rg?= <boss@example.com>',
    'Subject: a subject folded over\r\n   three lines,\twith tabs  \r\n\tand trailing spaces   ',
    'To: Zoë Ünal <staff@example.net>,\r\n Ana <ana@example.net>',
    'Content-Type: text/plain;\r\n\tcharset=utf-8',
  ].join('\r\n');
  const copy = await deliveredCopy(setup.server, setup.sink, 'boss@example.com', ['staff@example.net'], `${head}\r\n\r\nGrüße\r\n`);
  assert.ok(copy.includes(Buffer.from('Zoë Ünal')), 'the 8-bit field went as is');
  assert.deepEqual(await verifyDkim(copy, setup.records), [true]);
  assert.deepEqual(await verifyDkim(Buffer.concat([Buffer.from('Subject: other\r\n'), copy]), setup.records), [false]);
  assert.deepEqual(await verifyDkim(Buffer.from(copy.toString('latin1').replace('three lines', 'three  lines'), 'latin1'), setup.records), [true], 'relaxed: spaces');
  assert.deepEqual(await verifyDkim(Buffer.from(copy.toString('latin1').replace('Ana', 'Bob'), 'latin1'), setup.records), [false]);
});

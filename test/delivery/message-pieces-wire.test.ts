// Delivery hands nodemailer the message in 64 KiB pieces (engine/delivery/message-pieces.ts), the DKIM signature
// fields as a piece of their own in front. The data stream dot-stuffs and mends line ends a piece at a time: a piece
// boundary inside a CRLF, just before a dot at a line start, after a bare CR or inside a UTF-8 character must change
// nothing. Bodies of a short period make every kind of boundary happen whatever the header's length: 65536 is 1
// modulo 3 and 5, so consecutive boundaries fall on each position of the period in turn. A real sink receives,
// dkimpy verifies, and the body must be the one sent (line ends made CRLF, as the SMTP client always did).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery, deliveredCopy } from '../helpers/dkim-delivery.ts';

const setup = useSigningDelivery({ com: { type: 'rsa', domain: 'example.com', selector: 'sel', senderDomains: ['example.com'] } });

const BODIES: Record<string, string> = {
  'lines of one dot (CRLF split, dot at a piece start)': '.\r\n'.repeat(120_000),
  'UTF-8 lines (a character split)': 'aé\r\n'.repeat(80_000),
  // No dot after a bare line end: the test's client would stuff it (it takes any line end for one), the intake not.
  'bare CR line ends (a CR ending a piece)': 'ab\r'.repeat(150_000) + '\r\n',
  'bare LF line ends (an LF starting a piece)': 'ab\n'.repeat(150_000) + 'end\r\n',
  'a body of exactly 64 KiB, no line end at its end': 'x\r\n'.repeat(21_845) + 'x',
};

/** What the next hop must get of `body`: every bare CR and bare LF made CRLF, a CRLF at the end. */
function onTheWire(body: string): string {
  const crlf = body.replace(/\r\n|\r|\n/g, '\r\n');
  return crlf.endsWith('\r\n') ? crlf : crlf + '\r\n';
}

/** Where two long strings first differ, with a little of each around it (assert.equal would print them whole). */
function firstDifference(actual: string, expected: string): string | null {
  if (actual === expected) return null;
  let i = 0;
  while (i < actual.length && actual[i] === expected[i]) i++;
  return `at ${i} of ${actual.length} (expected ${expected.length}): ${JSON.stringify(actual.slice(Math.max(0, i - 8), i + 8))} for ${JSON.stringify(expected.slice(Math.max(0, i - 8), i + 8))}`;
}

function bodyOf(copy: Buffer): string {
  const s = copy.toString('utf8');
  return s.slice(s.indexOf('\r\n\r\n') + 4);
}

for (const [name, body] of Object.entries(BODIES)) {
  for (const signed of [true, false]) {
    test(`${signed ? 'signed' : 'unsigned'}: sent as spooled, piece boundaries anywhere: ${name}`, async () => {
      const from = signed ? 'a@example.com' : 'a@unsigned.test';
      const message = `From: <${from}>\r\nTo: <b@example.net>\r\nSubject: pieces\r\n\r\n${body}`;
      const copy = await deliveredCopy(setup.server, setup.sink, from, ['b@example.net'], message);
      assert.equal(firstDifference(bodyOf(copy), onTheWire(body)), null);
      if (signed) assert.deepEqual(await verifyDkim(copy, setup.records), [true]);
      else assert.doesNotMatch(copy.toString('latin1'), /^DKIM-Signature: /);
    });
  }
}

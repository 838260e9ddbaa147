// DKIM over the bytes actually sent, whatever line ends the client used: the SMTP client of the queue turns
// a bare LF into CRLF and a bare CR into CRLF too (a lone CR could otherwise end the data at a receiver
// that takes it as a line end: SMTP smuggling). The signature must be over those bytes, or the next hop's
// copy fails DKIM (worse than no signature: DMARC fails). A real sink receives; dkimpy verifies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery, deliveredCopy } from '../helpers/dkim-delivery.ts';

const setup = useSigningDelivery({ com: { type: 'rsa', domain: 'example.com', selector: 'sel', senderDomains: ['example.com'] } });

const HEAD = 'From: <a@example.com>\r\nTo: <b@example.net>\r\nSubject: line ends\r\n\r\n';
const BODIES: Record<string, string> = {
  'bare CR in the body': 'one\rtwo\r\nthree\r\n',
  'bare LF and bare CR': 'one\ntwo\rthree\r\n\rfour\r\n',
  'a CR before a dot': 'one\r.two\r\n',
  'a CR at the very end': 'one\r\ntwo\r',
};

const MESSAGES: Record<string, string> = {
  ...Object.fromEntries(Object.entries(BODIES).map(([name, body]) => [name, HEAD + body])),
  'bare LF everywhere, header too': HEAD.replace(/\r\n/g, '\n') + 'one\ntwo\n',
  'no empty line: all header section': 'From: <a@example.com>\r\nTo: <b@example.net>\r\nSubject: no body\r\n',
  'no line end at the end, after spaces': HEAD + 'one\r\ntwo  \t',
  'lines of dots (dot-stuffed on the wire, unstuffed by the next hop)': HEAD + 'one\r\n.\r\n..two\r\n.\r\n',
  // The body is hashed in pieces of 256 KiB, cut inside lines too: what is cut must not change the hash.
  'empty lines at the start, beyond a piece': HEAD + '\r\n'.repeat(300_000) + 'x\r\n',
  'a long line with WSP around the cut': HEAD + 'a'.repeat(262_140) + ' \t '.repeat(8) + 'b\r\n\r\n',
};

for (const [name, message] of Object.entries(MESSAGES)) {
  test(`DKIM verifies at the next hop: ${name}`, async () => {
    const copy = await deliveredCopy(setup.server, setup.sink, 'a@example.com', ['b@example.net'], message);
    assert.match(copy.toString('latin1'), /^DKIM-Signature: /);
    assert.deepEqual(await verifyDkim(copy, setup.records), [true]);
  });
}

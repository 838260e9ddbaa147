/**
 * What a transaction may carry to a next hop, given the extensions its EHLO reply offered. nodemailer sends
 * BODY=8BITMIME and SMTPUTF8 only where they are offered, and otherwise sends the message and the addresses
 * as they are: 8-bit content to a host that did not offer 8BITMIME (RFC 6152 §3 forbids it: convert, or
 * return it as undeliverable) and UTF-8 addresses to one that did not offer SMTPUTF8 (RFC 6531 §3.2 forbids
 * it). Such a next hop may strip the 8th bit, mangle the address, or deliver to another mailbox. Here: a UTF-8
 * domain travels in its A-label form, which every host reads; a UTF-8 local part cannot be written another
 * way, so that recipient fails (5.6.7, as Postfix's "SMTPUTF8 is required, but was not offered"), and so does
 * 8-bit content (5.6.3 conversion required but not supported: MIME conversion would also break a DKIM signature).
 * An SMTPUTF8 message whose header holds UTF-8 (RFC 6532) is internationalized whatever its addresses: nodemailer
 * declared SMTPUTF8 only for a UTF-8 address, so it went undeclared to a host offering SMTPUTF8 and, as plain 8-bit
 * mail, to one that does not; now it is declared there, and fails with 5.6.7 here, as Postfix does.
 */
import { envelopeDomain } from '../policy/domain-key.ts';
import { DeliveryFailure, outcomeForFailure, type RecipientOutcome } from './outcome.ts';

/** The extensions of a next hop's EHLO reply that decide what may be sent. */
export interface Offers { eightBitMime: boolean; smtputf8: boolean }

export interface WireEnvelope {
  /** The sender as sent. */
  from: string;
  /** The recipients that can be sent, as sent. */
  to: string[];
  /** Recipients that cannot be sent to this next hop, with why. */
  refused: RecipientOutcome[];
  /** The queued recipient(s) each recipient as sent stands for. */
  queued: Map<string, string[]>;
  /** MAIL FROM must declare SMTPUTF8 though every address is ASCII: the header holds UTF-8. */
  declareUtf8: boolean;
}

// eslint-disable-next-line no-control-regex
const ASCII = /^[\x00-\x7f]*$/;

/** `address` as a host without SMTPUTF8 can read it (its domain in A-labels), or null when it has none. */
export function asciiAddress(address: string): string | null {
  if (ASCII.test(address)) return address;
  const at = address.lastIndexOf('@');
  if (at < 0) return null;
  const local = address.slice(0, at);
  const domain = envelopeDomain(address.slice(at + 1), false);
  return ASCII.test(local) && domain ? `${local}@${domain}` : null;
}

export function wireEnvelope(tx: { from: string; to: string[]; eightBit: boolean; utf8Header: boolean }, offers: Offers, remote: string): WireEnvelope {
  const utf8Required = new DeliveryFailure(`SMTPUTF8 is required, but was not offered by host ${remote}`, { permanent: true, enhanced: '5.6.7', remoteMta: remote });
  const eightBitRefused = new DeliveryFailure(`${remote} does not offer 8BITMIME and the message has 8-bit content: it is not sent as is (RFC 6152), and conversion is not supported`,
    { permanent: true, enhanced: '5.6.3', remoteMta: remote });
  const form = (address: string): string | null => (offers.smtputf8 ? address : asciiAddress(address));
  const from = tx.utf8Header && !offers.smtputf8 ? null : form(tx.from);
  const out: WireEnvelope = { from: from ?? tx.from, to: [], refused: [], queued: new Map(), declareUtf8: tx.utf8Header && offers.smtputf8 };
  for (const r of tx.to) {
    // The address (or the header) first: the more precise reason (an SMTPUTF8 message has 8-bit content too).
    const wire = from === null ? null : form(r);
    if (wire === null) { out.refused.push(outcomeForFailure(r, utf8Required)); continue; }
    if (tx.eightBit && !offers.eightBitMime) { out.refused.push(outcomeForFailure(r, eightBitRefused)); continue; }
    const same = out.queued.get(wire);
    if (same) same.push(r);
    else { out.queued.set(wire, [r]); out.to.push(wire); }
  }
  return out;
}

/**
 * The mailboxes of an address header field (From:, Sender:, To: …), with nodemailer's addressparser: engine/delivery
 * owns nodemailer, and hands this to the SMTP side through its Runtime (engine/app wires it), whose sender binding
 * (engine/policy/header-senders.ts) reads the header's authors with it.
 */
import addressparser from 'nodemailer/lib/addressparser';
import type { AddressListParser } from '../policy/header-senders.ts';

/**
 * Every mailbox of `value`, a folded value unfolded first. A group gives its name as an entry without an address,
 * then its members: addressparser's own flattening dropped the name, and a reader's client shows it as the author
 * (`From: "ceo@example.com": alice@example.com;` passed the binding's look at display names).
 */
export const parseAddressList: AddressListParser = (value) => flattened(addressparser(value.replace(/\r?\n(?=[ \t])/g, '')));

function flattened(list: addressparser.AddressOrGroup[]): addressparser.Address[] {
  const out: addressparser.Address[] = [];
  for (const entry of list) {
    if ('group' in entry) out.push({ name: entry.name, address: '' }, ...flattened(entry.group ?? []));
    else out.push(entry);
  }
  return out;
}

/**
 * The mailboxes of an address header field (From:, Sender:, To: …), with nodemailer's addressparser: engine/delivery
 * owns nodemailer, and hands this to the SMTP side through its Runtime (engine/app wires it), whose sender binding
 * (engine/policy/header-senders.ts) reads the header's authors with it.
 */
import addressparser from 'nodemailer/lib/addressparser';
import type { AddressListParser } from '../policy/header-senders.ts';

/** Every mailbox of `value`, groups flattened; a folded value unfolded first. */
export const parseAddressList: AddressListParser = (value) => addressparser(value.replace(/\r?\n(?=[ \t])/g, ''), { flatten: true });

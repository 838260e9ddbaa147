/**
 * Sender binding (Postfix reject_authenticated_sender_login_mismatch): the envelope senders a logged-in
 * identity may use. Always its own address; more from the listener's `senderLogin.table` (identity → list)
 * and from the words after the account on its pin line. An entry `@domain` allows every address there.
 */
import type { LookupTable } from './lookup-tables.ts';
import { domainKey } from './domain-key.ts';

/** `"a@x.example, b@y.example  @z.example"` → the entries, lowercased; commas and whitespace separate. */
export function parseSenderList(text: string): string[] {
  return text.split(/[\s,]+/).filter(Boolean).map((s) => s.toLowerCase());
}

/** The extra senders (beyond its own address) that `user` may use. */
export function extraSenders(user: string, table: LookupTable | undefined, pinSenders: readonly string[]): string[] {
  const listed = table?.get(user);
  return [...(listed ? parseSenderList(listed) : []), ...pinSenders];
}

/** May `user` send as `address` (not the null sender), given its extra senders? Compared case-insensitively. */
export function ownsSender(user: string, extra: readonly string[], address: string): boolean {
  const a = senderKey(address);
  if (a === senderKey(user)) return true;
  const domain = a.slice(a.lastIndexOf('@'));
  return extra.some((e) => senderKey(e) === a || (e.startsWith('@') && senderKey(e) === domain));
}

/**
 * An address (or `@domain`) as sender bindings compare it: lower case, its domain by its A-labels (domain-key.ts),
 * so `alice@bücher.example` in a table or login binds the `alice@xn--bcher-kva.example` an ASCII transaction carries.
 * A local part that lowercasing would turn into ASCII it did not have keeps its case (asciiSafeLowerCase).
 */
export function senderKey(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return foldedLocalPart(address);
  return `${foldedLocalPart(address.slice(0, at))}@${domainKey(address.slice(at + 1)) || address.slice(at + 1).toLowerCase()}`;
}

function foldedLocalPart(local: string): string {
  return asciiSafeLowerCase(local) ?? local;
}

// eslint-disable-next-line no-control-regex
const ASCII = /[\x00-\x7f]/g;

/**
 * `value` in lower case, or null when lowercasing turns what is not ASCII into ASCII: U+212A KELVIN SIGN becomes
 * `k`, U+0130 `i` and a combining dot. A login `\u212Aate@x` (a certificate field, a script's accept) must not
 * own kate@x, nor a From: `\u212Aate@x` pass for kate's.
 */
export function asciiSafeLowerCase(value: string): string | null {
  const lower = value.toLowerCase();
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(value)) return lower;
  return (lower.match(ASCII)?.length ?? 0) === (value.match(ASCII)?.length ?? 0) ? lower : null;
}

/**
 * The only characters NFC maps to ASCII on their own (their canonical decompositions are singletons): U+037E GREEK
 * QUESTION MARK (`;`), U+1FEF GREEK VARIA (a backtick), U+212A KELVIN SIGN (`K`). A regular expression, not NFC
 * tried on each character: that spread the text into an array first (seconds for a table's overlong line).
 */
const NFC_TO_ASCII = /[\u037e\u1fef\u212a]/;

/**
 * `text` in NFC (a name typed on a Mac comes decomposed), unless NFC maps a character to ASCII on its own
 * (U+212A KELVIN SIGN is `K`, U+037E is `;`): then as it is, so that `\u212Aate` does not become kate.
 */
export function asciiSafeNfc(text: string): string {
  return NFC_TO_ASCII.test(text) ? text : text.normalize('NFC');
}

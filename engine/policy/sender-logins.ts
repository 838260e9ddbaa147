/**
 * Sender binding (Postfix reject_authenticated_sender_login_mismatch): the envelope senders a logged-in
 * identity may use. Always its own address; more from the listener's `senderLogin.table` (identity → list)
 * and from the words after the account on its pin line. An entry `@domain` allows every address there.
 */
import type { LookupTable } from './lookup-tables.ts';

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
  const a = address.toLowerCase();
  if (a === user.toLowerCase()) return true;
  const domain = a.slice(a.lastIndexOf('@'));
  return extra.some((e) => e === a || (e.startsWith('@') && e === domain));
}

/**
 * Sender binding of the header section (listener `senderLogin.headerFrom`, as mox does on submission): the
 * From: field is the author a reader is shown, the one DKIM signs with the domain's key and DMARC aligns on, so
 * a logged-in identity may name there only what it may use as MAIL FROM (sender-logins.ts); a Sender: likewise.
 * Addresses are read by the parser the caller passes (nodemailer's addressparser, engine/delivery/address-list.ts),
 * every mailbox of a list or a group.
 */
import { ownsSender } from './sender-logins.ts';
import { decodeEncodedWords } from './encoded-words.ts';

/** The mailboxes of an address field's value, groups flattened (engine/delivery/address-list.ts). */
export type AddressListParser = (value: string) => Array<{ name: string; address: string }>;

export type HeaderSenderRefusal =
  | { problem: 'from-count'; count: number }
  | { problem: 'no-address' }
  | { problem: 'not-owned'; field: 'From' | 'Sender'; address: string };

/**
 * An address in a display name. addressparser is lenient: of `<alice@x> ceo@x` or `Alice <alice@x> <ceo@x>` it
 * takes alice@x for the address and makes the rest the name, where a reader's client or a DMARC verifier may take
 * ceo@x. So an address-shaped word of a name must be one the login owns too (and `"ceo@x" <alice@x>` is refused).
 */
function addressesInName(name: string): string[] {
  const shown = readerForm(name);
  // Reordered for display, the name shows what no word of it says: "\u202Emoc.elpmaxe@oec" reads ceo@example.com.
  if (BIDI_CONTROL.test(shown)) return [shown];
  if (!shown.includes('@')) return [];
  // Split, then looked at word by word: a regex for `x@y.z` anywhere in the name backtracked quadratically on a long word.
  return shown.split(NAME_DELIMITERS).filter((word) => {
    const at = word.indexOf('@');
    return at > 0 && word.indexOf('.', at) > at + 1;
  });
}
const NAME_DELIMITERS = /[\s<>()[\],;:"]+/;
/** Bidi embeddings, overrides and isolates: a name holding one is owned by nobody (no login's address is it). */
const BIDI_CONTROL = /[\u202a-\u202e\u2066-\u2069]/;

/**
 * A display name as a reader is shown it: its RFC 2047 encoded-words decoded (`=?utf-8?q?ceo=40example.com?=`
 * shows ceo@example.com), then in NFKC with the IDNA full stops as dots, so that fullwidth `ｃｅｏ＠ｅｘａｍｐｌｅ．ｃｏｍ`
 * or `ceo@example。com`, which a reader takes for the CEO's address, is that address to the check too.
 */
function readerForm(name: string): string {
  const decoded = decodeEncodedWords(name);
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(decoded) ? decoded : decoded.normalize('NFKC').replace(/[\u3002\uff0e\uff61]/g, '.');
}

/**
 * What no plain addr-spec holds once addressparser has taken quotes and comments off: a second `@`, an angle
 * bracket, a space. Readers split such a leftover differently (`ceo@example.com@alice.example` is alice.example's
 * to one, example.com's to another), so it is owned by nobody, whatever `@domain` entry its last part matches.
 */
const AMBIGUOUS = /@[^@]*@|[\s<>()",;:\\]/;

/** Why `fields` (the message's header fields, [name, value]) name an author `user` may not use; null when none. */
export function headerSenderRefusal(fields: ReadonlyArray<readonly [string, string]>, user: string, extra: readonly string[], addresses: AddressListParser): HeaderSenderRefusal | null {
  const froms = fields.filter(([name]) => name.toLowerCase() === 'from');
  // None: no author to bind (and nothing for DKIM to sign). Two: a reader may be shown one, DMARC check the other.
  if (froms.length !== 1) return { problem: 'from-count', count: froms.length };
  const from = addresses(froms[0]![1]);
  if (!from.some((a) => a.address)) return { problem: 'no-address' };
  const owned = new Set<string>(); // each address judged once: a From: of the same address many times over stays cheap
  const notOwned = (field: 'From' | 'Sender', list: ReturnType<AddressListParser>): HeaderSenderRefusal | null => {
    for (const a of list) {
      for (const address of [a.address, ...addressesInName(a.name)]) {
        if (!address || owned.has(address)) continue;
        // An encoded-word in the address itself (which RFC 2047 forbids there, and some clients decode): the
        // address a reader may be shown must be as plain as the one the check compares.
        if (AMBIGUOUS.test(address) || AMBIGUOUS.test(readerForm(address)) || !ownsSender(user, extra, address)) return { problem: 'not-owned', field, address };
        owned.add(address);
      }
    }
    return null;
  };
  const refusal = notOwned('From', from);
  if (refusal) return refusal;
  for (const [name, value] of fields) {
    if (name.toLowerCase() !== 'sender') continue;
    const sender = notOwned('Sender', addresses(value));
    if (sender) return sender;
  }
  return null;
}

/**
 * The recipient table of the local domains (`localRecipients`, Postfix's local_recipient_maps and
 * relay_recipient_maps): the addresses that exist, so that mail to any other local recipient is refused at RCPT TO
 * (550 5.1.1) instead of accepted, undeliverable at the next hop, and bounced to a sender a spammer forged
 * (backscatter). One entry a line: `user@domain`, or `@domain` for every address of the domain (a catch-all);
 * `#` comments and blank lines; a second column (Postfix's `OK` in relay_recipients) is allowed and ignored.
 *
 * Compared as the rest of the envelope is: the domain by its A-labels in lower case (domain-key.ts), the local part
 * in NFC and lower case (as Postfix's table lookups fold it, and as mail stores look their users up), except where
 * lowercasing would make ASCII of what was not (U+212A KELVIN SIGN): then as written.
 */
import { readInputFile, readProblem } from '../config/input-file.ts';
import { linesOf, slicer } from '../config/give-way.ts';
import { containsPrivateKey, privateKeyFileMessage, quoteLine } from '../certificates/key-material.ts';
import { isLocalDomain } from '../config/local-domain.ts';
import { domainKey } from './domain-key.ts';
import { asciiSafeLowerCase, asciiSafeNfc } from './sender-logins.ts';
import { DRAWS_NOTHING } from '../text/draws-nothing.ts';

export class LocalRecipientsError extends Error {
  constructor(file: string, line: number | undefined, message: string) {
    super(`${file}${line ? `:${line}` : ''}: localRecipients: ${message}`);
    this.name = 'LocalRecipientsError';
  }
}

/**
 * A local part as the table keys it. NFC only where it makes no ASCII of what was not: NFC alone maps U+212A KELVIN
 * SIGN to `K`, so `\u212Aate` (as a policy service's Postfix asks, and delivers it) was kate's.
 */
function localKey(local: string): string {
  const nfc = asciiSafeNfc(local);
  return asciiSafeLowerCase(nfc) ?? nfc;
}

/** A domain the table can hold: a name, or an address literal, as localDomains takes them. */
function tableDomain(domain: string): string | null {
  return isLocalDomain(domain) ? domainKey(domain) : null;
}

/**
 * Whether a (keyed) local part may lose a subaddress, as Postfix's split_addr() decides: never `postmaster`,
 * `mailer-daemon` or `double-bounce`, and with `-` a delimiter, never `owner-foo` nor `foo-request` (mailing-list
 * addresses a Postfix next hop keeps whole: `alice-request@` taken as alice's was a user it did not know, bounced).
 */
function splittable(local: string, delimiters: string): boolean {
  if (local === 'postmaster' || local === 'mailer-daemon' || local === 'double-bounce') return false;
  return !(delimiters.includes('-') && (local.startsWith('owner-') || (local.length > 8 && local.endsWith('-request'))));
}

export class LocalRecipients {
  readonly file: string;
  /** Characters that start a subaddress (`user+tag`): `user+tag@d` is looked up as itself, then as `user@d`. */
  readonly delimiters: string;
  /** `local@domainKey`. */
  readonly #addresses = new Set<string>();
  /** Domains (keys) whose every address is accepted (`@domain`). */
  readonly #catchAll = new Set<string>();
  /** Domains with at least one entry: a local domain with none has every recipient refused. */
  readonly domains = new Set<string>();

  constructor(file: string, delimiters = '') {
    this.file = file;
    this.delimiters = delimiters;
  }

  get size(): number { return this.#addresses.size + this.#catchAll.size; }

  add(local: string, domain: string): void {
    this.domains.add(domain);
    if (local === '') this.#catchAll.add(domain);
    else this.#addresses.add(`${localKey(local)}@${domain}`);
  }

  /** Whether the recipient exists: its address, its address without the subaddress, or its domain's catch-all. */
  has(localPart: string, domain: string): boolean {
    const d = domainKey(domain);
    if (this.#catchAll.has(d)) return true;
    const local = localKey(localPart);
    if (this.#addresses.has(`${local}@${d}`)) return true;
    if (!this.delimiters || !splittable(local, this.delimiters)) return false;
    // Postfix's recipient_delimiter: the extension starts at the first delimiter (not at its start: `+x` is a user).
    for (let i = 1; i < local.length; i++) {
      if (this.delimiters.includes(local[i]!)) return this.#addresses.has(`${local.slice(0, i)}@${d}`);
    }
    return false;
  }
}

/**
 * The longest line taken: an address is at most 254 octets (RFC 5321 §4.5.3.1.3), a value beside it short. A longer
 * one is no entry (addresses joined by spaces: `echo $(cat list) > recipients`), refused before it is read: split
 * into its millions of words it held the event loop of every process for seconds, past the workers' watchdog.
 */
const MAX_LINE_CHARS = 4096;

/** Controls, format characters, the others that draw nothing (as envelope-path.ts refuses them), quotes and a second "@". */
const NOT_IN_A_LISTED_LOCAL_PART = new RegExp(String.raw`[\p{Cc}\p{Cf}"@]|` + DRAWS_NOTHING, 'u');

export async function loadLocalRecipients(file: string, delimiters = ''): Promise<LocalRecipients> {
  let text: string;
  try {
    text = (await readInputFile(file)).toString('utf8');
  } catch (err) {
    throw new LocalRecipientsError(file, undefined, `cannot read: ${readProblem(err)}`);
  }
  if (containsPrivateKey(text)) throw new LocalRecipientsError(file, undefined, privateKeyFileMessage('a recipient table'));
  const table = new LocalRecipients(file, delimiters);
  const giveWay = slicer();
  for (const [raw, line] of linesOf(text)) {
    const turn = giveWay();
    if (turn) await turn;
    if (raw.length > MAX_LINE_CHARS) throw new LocalRecipientsError(file, line, `a line of ${raw.length} characters, longer than the ${MAX_LINE_CHARS} a line may be: one address a line (were several joined by spaces?)`);
    if (/^\s*(#|$)/.test(raw)) continue;
    const words = raw.trim().split(/\s+/);
    if (words.length > 2) throw new LocalRecipientsError(file, line, `expected one address (or "@domain"), optionally followed by one value, got ${quoteLine(raw)}`);
    const entry = words[0]!;
    const at = entry.lastIndexOf('@');
    if (at < 0) throw new LocalRecipientsError(file, line, `expected "user@domain" or "@domain", got ${quoteLine(entry)}`);
    const local = entry.slice(0, at);
    // An address no client can send (quoted, routed, invisible characters) would be listed and match nobody.
    if (NOT_IN_A_LISTED_LOCAL_PART.test(local)) throw new LocalRecipientsError(file, line, `control, format or quote characters, or a second "@", in the local part of ${quoteLine(entry)}`);
    const domain = tableDomain(entry.slice(at + 1));
    if (!domain) throw new LocalRecipientsError(file, line, `expected a domain name or an address literal after "@", got ${quoteLine(entry)}`);
    table.add(local, domain);
  }
  // An emptied file (`make-list > recipients` caught before its output, or a mistake) would refuse every local
  // recipient with a permanent 550: never taken. To accept nobody at a domain, take it out of localDomains.
  if (table.size === 0) throw new LocalRecipientsError(file, undefined, 'lists no recipient: every local recipient would be refused (550); list the addresses, or `@domain` to accept a whole domain');
  return table;
}

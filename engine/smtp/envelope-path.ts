/**
 * The canonical form of a MAIL FROM or RCPT TO path, before anything (relay rule, scripts, lookup tables,
 * smtp-server's duplicate index, the spool) sees it: one address is written one way.
 *
 * - A quoted local part that needs no quotes loses them (RFC 5321 §4.1.2: `"ceo"@x` and `"c\eo"@x` are
 *   `ceo@x`, which the next hop delivers them to): kept quoted, a rcptto script or table that refuses or
 *   routes `ceo@x` missed them. One that needs its quotes (`"a b"@x`, `"a@b"@x`) is refused with 553 5.1.3,
 *   not smtp-server's bare syntax error: Postern does not carry such local parts (they are how routing hides
 *   in a local part, and few systems handle them alike).
 * - Any other local part must be a dot-atom (RFC 5321 Dot-string), not smtp-server's looser idea of one; a
 *   UTF-8 one (SMTPUTF8) is in NFC.
 * - The domain: smtp-server decodes A-labels to U-labels; an ASCII transaction keeps the A-labels the client
 *   sent (else `user@xn--bcher-kva.example` became non-ASCII and was refused as undeclared UTF-8), an SMTPUTF8
 *   one gets the U-labels of the same name (IDNA-mapped: no soft hyphen or fullwidth spelling), and a name IDNA
 *   refuses (an A-label that decodes to a control character) is a syntax error.
 */
import { isAscii } from 'node:buffer';
import type { SMTPServerAddress } from 'smtp-server';
import type { Config } from '../config/schema.ts';
import { envelopeDomain } from '../policy/domain-key.ts';
import { rewriteBarePostmaster } from '../policy/postmaster.ts';
import { DRAWS_NOTHING } from '../text/draws-nothing.ts';
import { reply } from './replies.ts';
import type { SmtpReply } from './reply.ts';

/**
 * What no address carries (RFC 6530 §10.1, PRECIS IdentifierClass): controls, format characters (soft hyphen, bidi
 * embeddings, overrides and isolates, word joiner, tags), surrogates, private use and unassigned code points. They
 * make `ce<U+00AD>o@x` or `<U+E0041>ceo@x` read as ceo@x to a person, a log and a lenient next hop while every
 * string compare (a script, a table, a binding) sees another address, and `<U+202E>` turns what follows around.
 * ZWNJ and ZWJ stay: Persian, Indic scripts and emoji sequences need them (IDNA2008 allows them in context).
 *
 * And every other default-ignorable code point (DRAWS_NOTHING): the Hangul fillers (`c<U+3164>eo@x`), the combining
 * grapheme joiner, Khmer's inherent vowels and the variation selectors made the same invisible second address as a
 * soft hyphen.
 */
const NOT_IN_AN_ADDRESS = new RegExp(String.raw`[\p{Cc}\p{Cs}\p{Co}\p{Cn}]|(?![\u200c\u200d])\p{Cf}|` + DRAWS_NOTHING, 'u');

/** Whether `text` holds a character no address carries (above). */
export function holdsNoAddressCharacter(text: string): boolean {
  return NOT_IN_AN_ADDRESS.test(text);
}

/**
 * `command` (MAIL or RCPT) ready for smtp-server's parser: refused when its local part holds a character no address
 * carries (above), else with a quoted local part unquoted (unquotedPath).
 */
export function preparedPath(command: Buffer): Buffer | SmtpReply {
  if (!isAscii(command)) {
    const text = command.toString('utf8');
    const open = text.indexOf('<');
    const close = text.indexOf('>', open);
    const path = open < 0 ? '' : text.slice(open + 1, close < 0 ? undefined : close);
    // The local part: a domain is IDNA-mapped instead (a soft hyphen there is ignored, envelopeForm).
    if (holdsNoAddressCharacter(path.slice(0, Math.max(0, path.lastIndexOf('@'))))) return reply('invisibleInAddress');
  }
  return unquotedPath(command);
}

/** RFC 5321 atext (and UTF-8, RFC 6531), dot-separated: a local part that needs no quotes. */
const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\u{10ffff}-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\u{10ffff}-]+)*$/u;
/** The path's start in a command: `FROM:` or `TO:`, spaces, `<`, an optional source route, then a `"`. */
const QUOTED_PATH = /^((?:MAIL +FROM|RCPT +TO) *: *<(?:@[^\s,:@<>]+(?:,@[^\s,:@<>]+)*:)?)"/i;

/**
 * `command` (a MAIL or RCPT line, without its line end) with a quoted local part unquoted; the refusal when
 * it needs its quotes; the command itself when it has none, or a quoted string smtp-server will refuse anyway.
 */
export function unquotedPath(command: Buffer): Buffer | SmtpReply {
  const quote = command.indexOf(0x22);
  if (quote < 0) return command; // the usual case: no quote, nothing to look at
  const text = command.toString('utf8');
  const start = QUOTED_PATH.exec(text);
  if (!start) return command;
  let local = '';
  let i = start[0].length;
  for (; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) break;
    if (c === 0x5c) { // quoted-pairSMTP: a backslash and any printable ASCII character
      const next = text.charCodeAt(++i);
      if (!(next >= 0x20 && next <= 0x7e)) return command;
      local += text[i];
    } else if ((c >= 0x20 && c <= 0x7e) || c >= 0x80) {
      local += text[i];
    } else {
      return command; // a control character: smtp-server's syntax error
    }
  }
  if (i >= text.length || text[i + 1] !== '@') return command;
  if (!DOT_ATOM.test(local)) return reply('quotedLocalPart');
  return Buffer.from(start[1] + local + text.slice(i + 1));
}

/**
 * The address smtp-server parsed, its domain in envelope form (see above); false (a syntax error) when IDNA
 * refuses the domain, or when the local part is no dot-atom (RFC 5321 Dot-string: quoted ones were unquoted
 * before): smtp-server takes `ce"o"`, `c\eo`, `ceo(x)` or `c,eo`, which a next hop parsing the address the
 * RFC 5322 way reads as ceo (a comment dropped, a quoted-pair unescaped) or as two addresses, while the rcptto
 * script saw another string. `utf8`: the transaction declared SMTPUTF8. `asciiCommand`: the command was ASCII (else a non-ASCII
 * address without SMTPUTF8 is left as it is, for the refusal of undeclared UTF-8).
 */
export function envelopeForm(address: string, utf8: boolean, asciiCommand: boolean): string | false {
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  if (!DOT_ATOM.test(address.slice(0, at))) return false;
  if (!utf8 && !asciiCommand) return address;
  const domain = envelopeDomain(address.slice(at + 1), utf8);
  if (!domain) return false;
  // A UTF-8 local part in NFC (RFC 6532 §3.1): `jose<U+0301>` is josé, as a script or table writes it.
  const local = asciiCommand ? address.slice(0, at) : address.slice(0, at).normalize('NFC');
  return `${local}@${domain}`;
}

/**
 * What the listener does to the path smtp-server parsed (postern-connection.ts), and `postern try` too: a bare
 * RCPT TO:<postmaster> rewritten (postmaster.ts), else the address in envelope form. false: a syntax error.
 */
export function canonicalAddress(parsed: { address: string }, rcpt: boolean, utf8: boolean, asciiCommand: boolean,
  config: Pick<Config, 'localDomains' | 'hostname'>): boolean {
  if (rcpt && rewriteBarePostmaster(parsed, config)) return true;
  const address = envelopeForm(parsed.address, utf8, asciiCommand);
  if (address === false) return false;
  parsed.address = address;
  return true;
}

/** The MAIL FROM `mail` declared SMTPUTF8: its transaction may carry UTF-8 (addresses, header, replies). */
export function declaresUtf8(mail: Pick<SMTPServerAddress, 'args'>): boolean {
  return !!(mail.args && (mail.args as Record<string, unknown>).SMTPUTF8);
}

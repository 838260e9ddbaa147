/**
 * The form mail domains are compared in: lower-case A-labels (IDNA, UTS #46 mapping), without a trailing dot.
 * `xn--bcher-kva.example`, `Bücher.example` and `bücher.example.` are one domain; so are `EXAMPLE.com` and its
 * fullwidth or soft-hyphenated spellings. Postfix likewise matches mydestination by the A-label form.
 */
import { domainToASCII, domainToUnicode } from 'node:url';

/** A name that is plain ASCII without an A-label: only its case can differ (no IDNA work per RCPT). */
// eslint-disable-next-line no-control-regex
const PLAIN_ASCII = /^(?:(?!xn--)[\x00-\x7f])*$/i;

/**
 * The A-label form of a name that is not plain ASCII, or '' when IDNA refuses it: a label that decodes to a
 * control or invisible character, or an A-label that is not the encoding of its own U-label.
 */
function aLabels(name: string): string {
  const ascii = domainToASCII(name);
  return ascii && domainToASCII(domainToUnicode(ascii)) === ascii ? ascii : '';
}

/** `domain`'s key; '' for a name IDNA refuses. */
export function domainKey(domain: string): string {
  const name = domain.endsWith('.') ? domain.slice(0, -1) : domain;
  if (PLAIN_ASCII.test(name) || name.startsWith('[')) return name.toLowerCase(); // address literals as they are
  return aLabels(name);
}

/** `domain`'s A-labels for a script (EnvelopeAddress.asciiDomain): its key, or as it is, lowercased, when IDNA refuses it. */
export function asciiDomain(domain: string): string {
  return domainKey(domain) || domain.toLowerCase();
}

/**
 * `domain` as an envelope carries it: the A-label form, or with `utf8` (an SMTPUTF8 transaction) the U-label
 * form of that same name; '' when IDNA refuses it. A plain ASCII name is kept as written.
 */
export function envelopeDomain(domain: string, utf8: boolean): string {
  if (PLAIN_ASCII.test(domain) || domain.startsWith('[')) return domain;
  const ascii = aLabels(domain);
  if (!ascii) return '';
  return utf8 ? domainToUnicode(ascii) : ascii;
}

/**
 * A MAIL or RCPT parameter whose value, xtext-decoded (RFC 3461 §4), holds a control character (`ORCPT=rfc822;a+0D+0Ab`):
 * smtp-server refuses the whole command for it as an address that does not parse (501 5.1.3 Bad recipient address
 * syntax, 501 5.1.7 at MAIL FROM), which blames an address that may be fine. The parameter is named instead, as
 * Postfix does (501 5.5.4 Bad ORCPT parameter syntax). Read as smtp-server's parser reads the command, so that the
 * two agree on which parameter it is.
 */
import { reply } from './replies.ts';
import type { SmtpReply } from './reply.ts';

// smtp-server's CONTROL_CHARS, which it tests each decoded value with: C0, DEL, C1.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;

/** The refusal naming the first parameter of `command` (MAIL or RCPT, with its verb) that holds a control character, or null. */
export function parameterControlRefusal(command: Buffer): SmtpReply | null {
  if (!mayHoldControl(command)) return null; // the usual case: no xtext escape, no control byte
  const parts = command.toString('utf8').split(':');
  parts.shift(); // `MAIL FROM` or `RCPT TO`
  const words = parts.join(':').trim().split(/\s+/);
  words.shift(); // the path
  for (const word of words) {
    const [key = '', ...value] = word.split('=');
    if (!key.trim() || !value.join('=')) continue; // no name, or no value (smtp-server takes `KEY` alone as true)
    if (CONTROL.test(decodeXtext(value.join('=')))) return reply('parameterSyntax', { parameter: key.toUpperCase().slice(0, 64) });
  }
  return null;
}

/**
 * The refusal of the first parameter of `command` (MAIL or RCPT, with its verb) that has no name (`=x`, `=`), or null:
 * smtp-server's parser drops such a word unread, so the command was taken with a parameter nothing looked at, where
 * any other parameter not offered gets 555 (RFC 5321 §4.1.1.11: esmtp-keyword starts with a letter or digit). Named
 * as written, as Postfix answers it (`555 5.5.4 Unsupported option: =x`).
 */
export function unnamedParameterRefusal(command: Buffer): SmtpReply | null {
  if (!command.includes(0x3d)) return null; // no `=` at all
  const text = command.toString('utf8');
  // The usual case: no `=` after a blank (SIZE=, BODY= … have their name before it), as smtp-server splits (\s).
  if (!/\s=/.test(text)) return null;
  const parts = text.split(':');
  parts.shift(); // `MAIL FROM` or `RCPT TO`
  const words = parts.join(':').trim().split(/\s+/);
  words.shift(); // the path
  for (const word of words) if (word.startsWith('=')) return reply('parameterUnsupported', { parameter: word.slice(0, 64) });
  return null;
}

/** An xtext escape (`+HH`), a control byte, or a UTF-8 lead byte of C1 (0xC2): only then can a value decode to a control. */
function mayHoldControl(command: Buffer): boolean {
  for (const byte of command) if (byte === 0x2b || byte < 0x20 || byte === 0x7f || byte === 0xc2) return true;
  return false;
}

/** As smtp-server decodes xtext: every `+HH`. */
function decodeXtext(value: string): string {
  return value.replace(/\+([0-9A-F]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

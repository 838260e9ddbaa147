/**
 * SmtpReply: an Error that carries its wire reply. Hooks throw or return it; smtp-server sends
 * `responseCode` and the message, which starts with the enhanced status code (RFC 3463).
 */
export class SmtpReply extends Error {
  readonly responseCode: number;
  readonly enhanced: string;
  readonly text: string;
  /** Close the connection after sending. */
  readonly disconnect: boolean;
  /** Why: the rule, limit or script that decided (for the log line, never sent to the client). */
  readonly reason: string | undefined;

  constructor(code: number, enhanced: string, text: string, options: { disconnect?: boolean; cause?: unknown; reason?: string } = {}) {
    super(`${enhanced} ${sanitizeReplyText(text)}`, { cause: options.cause });
    this.name = 'SmtpReply';
    this.responseCode = code;
    this.enhanced = enhanced;
    this.text = sanitizeReplyText(text);
    this.disconnect = options.disconnect ?? code === 421;
    this.reason = options.reason;
  }
}

/** Reply text must never contain a line break or control character (response splitting). */
export function sanitizeReplyText(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f]+/g, ' ').slice(0, 400);
}

/** A reply line's text already carries an enhanced status code. */
export const ENHANCED_CODE_PREFIX = /^[245]\.\d{1,3}\.\d{1,3}( |$)/;

/** Internal failures are deferred, never bounced (fail closed). */
export const localError = (id?: string): SmtpReply =>
  new SmtpReply(451, '4.3.0', `Temporary local problem, try again later${id ? ` (${id})` : ''}`, { reason: 'local error' });

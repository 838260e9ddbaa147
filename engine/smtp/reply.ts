/**
 * SmtpReply: one reply Postern decided, with everything the wire and the log need. Refusals (4xx/5xx)
 * are handed to smtp-server's callbacks as errors, which is why it is an Error; the text smtp-server
 * sends is `message`, which starts with the enhanced status code (RFC 3463). Every SmtpReply is built
 * from the catalogue (replies.ts) or the verdict table (verdict-replies.ts); PosternConnection.send()
 * is where it reaches the wire.
 */
export class SmtpReply extends Error {
  readonly responseCode: number;
  readonly enhanced: string;
  readonly text: string;
  /** Close the connection after sending (421 always does). */
  readonly disconnect: boolean;
  /** Why: the rule, limit or script that decided (for the log line, never sent to the client). */
  readonly reason: string | undefined;

  constructor(code: number, enhanced: string, text: string, options: { disconnect?: boolean; cause?: unknown; reason?: string } = {}) {
    // A reply is built for every accepted message and most commands: its stack trace says nothing and
    // cost ~4 µs per message in the profile (V8 captures one for every Error).
    // No options object without a cause (it would add a `cause` property), and the name is the prototype's
    // (an own one is one more property per reply): the 250 of every message is built here (perf).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    const clean = sanitizeReplyText(text);
    super(`${enhanced} ${clean}`, options.cause === undefined ? undefined : { cause: options.cause });
    Error.stackTraceLimit = limit;
    this.responseCode = code;
    this.enhanced = enhanced;
    this.text = clean;
    this.disconnect = (options.disconnect ?? false) || code === 421;
    this.reason = options.reason;
  }

  /** A 4xx or 5xx: smtp-server gets it as the callback's error. */
  get refuses(): boolean { return this.responseCode >= 400; }

  static {
    this.prototype.name = 'SmtpReply';
  }
}

// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTER = /[\x00-\x1f\x7f]/;
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTERS = /[\x00-\x1f\x7f]+/g;

/** Reply text must never contain a line break or control character (response splitting). */
export function sanitizeReplyText(text: string): string {
  // Most texts are clean and short: checked first, they are returned as they are (no copy).
  const clean = CONTROL_CHARACTER.test(text) ? text.replace(CONTROL_CHARACTERS, ' ') : text;
  return clean.length > 400 ? clean.slice(0, 400) : clean;
}

/** A reply line's text already carries an enhanced status code. */
export const ENHANCED_CODE_PREFIX = /^[245]\.\d{1,3}\.\d{1,3}( |$)/;

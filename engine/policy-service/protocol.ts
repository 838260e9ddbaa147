/**
 * The Postfix policy delegation protocol (SMTPD_POLICY_README): a request is `name=value` lines up to an
 * empty line; the answer is `action=<access(5) action>` and an empty line. Several requests may follow
 * one another on a connection (also before the previous answer, which a reader must tolerate). This
 * module only splits text into requests and formats answers; what a request means is request-context.ts's.
 */

export interface RequestLimits {
  /** Longest line (attribute) accepted, in characters. */
  maxLineBytes: number;
  /** Most attributes in one request. */
  maxAttributes: number;
  /** Most characters in one request, line ends included. */
  maxRequestBytes: number;
}

export interface PolicyRequest {
  /** Every attribute, last one wins on a repeated name (the ones Postfix defines but did not send: undefined). */
  attributes: Record<string, string>;
  /** Why the request cannot be decided (a line without `=`, no `request=smtpd_access_policy`), or null. */
  malformed: string | null;
  /** Its length in characters, line ends included: what it weighs while it waits for its answer. */
  size: number;
}

const EQUALS = 61; // '='

/**
 * A request's attributes. Postfix sends the same attributes in every request (SMTPD_POLICY_README, Postfix
 * 3.x): declared here, they make an object of fixed shape instead of a hash table grown entry by entry,
 * about 3 KB less per request for the garbage collector. Attributes not sent stay undefined (absent to
 * scripts: the sandbox copies own defined values); unknown ones are added as they come. No
 * prototype to reach through a name: a client's `constructor=` or `__proto__=` is just an attribute.
 */
class PostfixAttributes {
  request?: string; protocol_state?: string; protocol_name?: string; helo_name?: string; queue_id?: string;
  sender?: string; recipient?: string; recipient_count?: string; client_address?: string; client_name?: string;
  reverse_client_name?: string; client_port?: string; instance?: string; sasl_method?: string;
  sasl_username?: string; sasl_sender?: string; size?: string; ccert_subject?: string; ccert_issuer?: string;
  ccert_fingerprint?: string; ccert_pubkey_fingerprint?: string; encryption_protocol?: string;
  encryption_cipher?: string; encryption_keysize?: string; etrn_domain?: string; stress?: string;
  policy_context?: string; server_address?: string; server_port?: string; compatibility_level?: string;
  mail_version?: string;
}
Object.setPrototypeOf(PostfixAttributes.prototype, null);
Reflect.deleteProperty(PostfixAttributes.prototype, 'constructor');
const newAttributes = (): Record<string, string> => new PostfixAttributes() as unknown as Record<string, string>;

/**
 * Splits the text of one connection into requests (the socket's utf8 decoding keeps characters whole). Input
 * is only parsed as requests are taken (next()): a caller that stops taking them holds the unread text, not
 * the thousands of request objects a chunk of tiny requests would make.
 */
export class RequestReader {
  readonly #limits: RequestLimits;
  /** Input not read yet: text[start…]. */
  #text = '';
  #start = 0;
  #attributes = newAttributes();
  #count = 0;
  #size = 0;
  #malformed: string | null = null;
  #fatal: string | null = null;

  constructor(limits: RequestLimits) {
    this.#limits = limits;
  }

  /** More input, read by the next calls of next(). */
  push(chunk: string): void {
    if (this.#fatal !== null) return;
    this.#text = this.#start < this.#text.length ? this.#text.slice(this.#start) + chunk : chunk;
    this.#start = 0;
  }

  /** The next whole request of the input, or null: more input is needed, or a limit was broken (fatal). */
  next(): PolicyRequest | null {
    if (this.#fatal !== null) return null;
    const text = this.#text;
    for (let nl = text.indexOf('\n', this.#start); nl >= 0; nl = text.indexOf('\n', this.#start)) {
      const start = this.#start;
      const end = nl > start && text.charCodeAt(nl - 1) === 13 ? nl - 1 : nl; // tolerate CRLF
      if (end - start > this.#limits.maxLineBytes) return this.#fail(`line longer than ${this.#limits.maxLineBytes} characters`);
      this.#start = nl + 1;
      this.#size += nl + 1 - start;
      if (this.#size > this.#limits.maxRequestBytes) return this.#fail(`request longer than ${this.#limits.maxRequestBytes} characters`);
      if (end === start) {
        if (this.#count === 0 && this.#malformed === null) { this.#size = 0; continue; } // stray empty line between requests
        return this.#finish();
      }
      const fatal = this.#line(text, start, end);
      if (fatal) return this.#fail(fatal);
    }
    if (text.length - this.#start > this.#limits.maxLineBytes) return this.#fail(`line longer than ${this.#limits.maxLineBytes} characters`);
    return null;
  }

  /** Why a limit was broken (nothing more is read from this connection), or null. */
  get fatal(): string | null { return this.#fatal; }

  /** Input ended in the middle of a request (the peer closed). */
  get incomplete(): boolean { return this.#count > 0 || this.#start < this.#text.length || this.#malformed !== null; }

  /** The line text[start, end): the name and value are cut from the chunk directly (no string per line). */
  #line(text: string, start: number, end: number): string | null {
    if (++this.#count > this.#limits.maxAttributes) return `more than ${this.#limits.maxAttributes} attributes in one request`;
    let eq = start;
    while (eq < end && text.charCodeAt(eq) !== EQUALS) eq++; // within the line only: indexOf could scan the whole chunk per line
    if (eq === start || eq === end) {
      this.#malformed ??= `not a name=value line: ${JSON.stringify(text.slice(start, Math.min(end, start + 80)))}`;
      return null;
    }
    this.#attributes[text.slice(start, eq)] = text.slice(eq + 1, end);
    return null;
  }

  #finish(): PolicyRequest {
    const attributes = this.#attributes;
    let malformed = this.#malformed;
    if (!malformed && attributes.request !== 'smtpd_access_policy') {
      malformed = attributes.request === undefined ? 'no request= attribute' : `unknown request type ${JSON.stringify(attributes.request.slice(0, 80))}`;
    }
    const size = this.#size;
    this.#attributes = newAttributes();
    this.#count = 0;
    this.#size = 0;
    this.#malformed = null;
    return { attributes, malformed, size };
  }

  #fail(why: string): null {
    this.#fatal = why;
    this.#text = '';
    this.#start = 0;
    return null;
  }
}

/** The answer to one request: `action=…` and the empty line that ends it. */
export function formatAnswer(action: string): string {
  // An action is one line: a script's text must not split it (answer splitting).
  // eslint-disable-next-line no-control-regex
  return `action=${action.replace(/[\x00-\x1f\x7f]+/g, ' ')}\n\n`;
}

/** Answers as bytes, kept for the actions that repeat (DUNNO, OK, a script's fixed texts): nothing to build or encode per request. */
const answerBytes = new Map<string, Buffer>();
const MAX_KEPT_ANSWERS = 256;

export function answerBuffer(action: string): Buffer {
  let bytes = answerBytes.get(action);
  if (!bytes) {
    if (answerBytes.size >= MAX_KEPT_ANSWERS) answerBytes.clear(); // texts with a recipient in them do not repeat
    answerBytes.set(action, bytes = Buffer.from(formatAnswer(action)));
  }
  return bytes;
}

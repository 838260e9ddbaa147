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
}

export interface PolicyRequest {
  /** Every attribute, last one wins on a repeated name (the ones Postfix defines but did not send: undefined). */
  attributes: Record<string, string>;
  /** Why the request cannot be decided (a line without `=`, no `request=smtpd_access_policy`), or null. */
  malformed: string | null;
}

/** What a chunk of input completed: whole requests, and possibly a fault that ends the connection. */
export interface ReadResult {
  requests: PolicyRequest[];
  /** The input broke a limit: answer what came before, then the failure action, then close. */
  fatal: string | null;
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

/** Splits the text of one connection into requests, chunk by chunk (the socket's utf8 decoding keeps characters whole). */
export class RequestReader {
  readonly #limits: RequestLimits;
  #pending = '';
  #attributes = newAttributes();
  #count = 0;
  #malformed: string | null = null;
  #failed = false;

  constructor(limits: RequestLimits) {
    this.#limits = limits;
  }

  push(chunk: string): ReadResult {
    const requests: PolicyRequest[] = [];
    if (this.#failed) return { requests, fatal: null };
    let text = this.#pending + chunk;
    let start = 0;
    for (let nl = text.indexOf('\n', start); nl >= 0; nl = text.indexOf('\n', start)) {
      const end = nl > start && text.charCodeAt(nl - 1) === 13 ? nl - 1 : nl; // tolerate CRLF
      if (end - start > this.#limits.maxLineBytes) return this.#fail(requests, `line longer than ${this.#limits.maxLineBytes} characters`);
      const fatal = this.#line(text, start, end, requests);
      if (fatal) return this.#fail(requests, fatal);
      start = nl + 1;
    }
    text = text.slice(start);
    if (text.length > this.#limits.maxLineBytes) return this.#fail(requests, `line longer than ${this.#limits.maxLineBytes} characters`);
    this.#pending = text;
    return { requests, fatal: null };
  }

  /** A limit was broken: nothing more is read from this connection. */
  get failed(): boolean { return this.#failed; }

  /** Input ended in the middle of a request (the peer closed). */
  get incomplete(): boolean { return this.#count > 0 || this.#pending.length > 0 || this.#malformed !== null; }

  /** The line text[start, end): the name and value are cut from the chunk directly (no string per line). */
  #line(text: string, start: number, end: number, requests: PolicyRequest[]): string | null {
    if (end === start) {
      if (this.#count === 0 && this.#malformed === null) return null; // stray empty line between requests
      requests.push(this.#finish());
      return null;
    }
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
    this.#attributes = newAttributes();
    this.#count = 0;
    this.#malformed = null;
    return { attributes, malformed };
  }

  #fail(requests: PolicyRequest[], why: string): ReadResult {
    this.#failed = true;
    this.#pending = '';
    return { requests, fatal: why };
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

/** What a hook may return. Returning nothing (undefined) applies the context's default. */

export interface AcceptVerdict {
  verdict: 'accept';
  /** AUTH only: the username the session logs in as, lowercased and in NFC (default: the identity the built-in rule found, else the one the client proved, never an authzid it asked to act for). */
  username?: string;
  /** Text of the 2xx reply, in place of the default (MAIL FROM, RCPT TO and end of DATA). */
  text?: string;
  /**
   * data only: edits of the message's header section, applied in order when the message is spooled (the
   * spooled message is the edited one). Postern's own Received header stays first and is never edited. A
   * malformed edit fails the hook closed (451 4.3.0). At most 64 edits.
   */
  headers?: HeaderEdit[];
  /**
   * data only: accept the message (the client gets its 250) but put it on hold in the queue, as Postfix's
   * `HOLD` action: it is not delivered until an operator runs `postern queue release` (or deleted with
   * `postern queue delete`). The text is the reason `postern queue show` and the log give: 1 to 200
   * characters, no control characters. The hold is on disk before the 250.
   */
  hold?: string;
}

/**
 * One header edit. Names are matched case-insensitively. `add` puts a field at the top of the message's
 * header section (below Postern's Received; several adds keep their order); `set` replaces the first field
 * of that name and removes the others (or adds it, when there is none); `remove` removes every field of
 * that name. A name is 1 to 76 printable US-ASCII characters other than `:`; a value has no CR, LF or other
 * control character but tab, and `name: value` is at most 998 bytes (one line, RFC 5322 §2.1.1).
 */
export type HeaderEdit =
  | { op: 'add'; name: string; value: string }
  | { op: 'set'; name: string; value: string }
  | { op: 'remove'; name: string };

export interface RejectVerdict {
  verdict: 'reject';
  /** Reply text (without code). */
  text?: string;
  /** 5xx reply code; default depends on the context (550, 535 in AUTH, 554 at connect). */
  code?: number;
  /** Enhanced status code such as `5.7.1`; default derived from the context. */
  enhanced?: string;
  /** Close the connection after the reply. */
  disconnect?: boolean;
}

export interface DeferVerdict {
  verdict: 'defer';
  text?: string;
  /** 4xx reply code; default 451 (454 in AUTH, 421 with disconnect). */
  code?: number;
  enhanced?: string;
  disconnect?: boolean;
}

export type Verdict = AcceptVerdict | RejectVerdict | DeferVerdict;

/** Options a pre-delivery script may set for the outbound TLS session (Postfix smtp_tls_security_level). */
export interface DeliveryTls {
  /** none: never STARTTLS; may: opportunistic; encrypt: TLS required, server unchecked; verify: TLS + CA + host name. */
  mode?: 'none' | 'may' | 'encrypt' | 'verify';
  /**
   * Name of an outbound client certificate declared in the configuration (`clientCertificates`); `null`:
   * present none, even where `delivery.tls.clientCertificate` names a default.
   */
  clientCertificate?: string | null;
  /** Server name to send as SNI and to check in `verify` mode. */
  serverName?: string;
  /** Name of a CA bundle declared in the configuration (`delivery.caFiles`), for `verify`. */
  ca?: string;
}

/** Pre-delivery: deliver (optionally overriding route and TLS), bounce now, or retry later. */
export interface DeliverVerdict {
  verdict: 'deliver';
  /** Next hop override. */
  host?: string;
  port?: number;
  /** Connect with implicit TLS (465 style) instead of STARTTLS. */
  implicitTls?: boolean;
  tls?: DeliveryTls;
  /**
   * Name of a DKIM key declared in the configuration (`delivery.dkim`) to sign this delivery with, or several
   * (at most 8, each once) to sign it once with each, e.g. an RSA and an Ed25519 key (RFC 8463 §4: verifiers
   * that do not know Ed25519 check the RSA signature); `null` or `[]`: do not sign, even where a key is the
   * default for the sender's domain.
   */
  dkim?: string | readonly string[] | null;
}

export type PredeliveryVerdict = DeliverVerdict | RejectVerdict | DeferVerdict;

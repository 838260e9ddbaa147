/**
 * One context type per hook. Hook order on a connection:
 * connect → (TLS) → helo → auth → mailfrom → rcptto (once per recipient) → data; predelivery runs in the
 * queue, once per delivery attempt and recipient domain. Every context is a copy taken when the hook starts.
 */
import type { ConnectionInfo, EnvelopeAddress, SmtpConnectionInfo, TransactionInfo } from './session.ts';
import type { ChainFailureReason } from './certificate.ts';

/**
 * A Postfix policy request (SMTPD_POLICY_README), as received: present in the context only when
 * `connection.source` is `postfix-policy`.
 */
export interface PostfixPolicyRequest {
  /** Every `name=value` attribute of the request, the ones Postern maps and the unknown ones alike. */
  attributes: Record<string, string>;
  /** `CONNECT`, `EHLO`, `HELO`, `MAIL`, `RCPT`, `DATA` or `END-OF-MESSAGE`. */
  protocolState: string;
  /** Postfix's id of the message transaction (`instance`): the same for every request of one message. */
  instance: string | null;
  /** Postfix's queue id, once it has one. */
  queueId: string | null;
  /** The client's verified host name (`client_name`), or null when `unknown`. */
  clientName: string | null;
  /** The client's PTR name (`reverse_client_name`), or null when `unknown`. */
  reverseClientName: string | null;
}

/** connect: a client connected (after the TLS handshake on implicit-TLS listeners). Default: accept. */
export interface ConnectContext {
  connection: ConnectionInfo;
  /** Only from a Postfix policy service. */
  postfix?: PostfixPolicyRequest;
}

/** helo: HELO/EHLO received. Default: accept. */
export interface HeloContext {
  connection: ConnectionInfo;
  helo: { name: string; command: 'HELO' | 'EHLO' };
  /** Only from a Postfix policy service. */
  postfix?: PostfixPolicyRequest;
}

/** The built-in AUTH rule's decision, so a script can extend rather than replace it. */
export interface BuiltinAuthDecision {
  accepted: boolean;
  /** Username the built-in rule would log in as. */
  username: string | null;
  /** Why: accepted by `certificate-identity` or `password`; refused for the others. */
  reason: 'certificate-identity' | 'password' | 'no-identity' | 'authzid-not-permitted' | 'empty-password' | 'bad-password' | 'certificate-account-mismatch';
}

/** auth: an AUTH exchange completed its SASL steps (on Postern's own listener only). Default: the built-in rule. */
export interface AuthContext {
  connection: SmtpConnectionInfo;
  auth: {
    mechanism: 'EXTERNAL' | 'PLAIN' | 'LOGIN';
    /** PLAIN/LOGIN: the authentication identity; EXTERNAL: the authzid (may be empty). */
    username: string;
    /** PLAIN/LOGIN password; always empty for EXTERNAL. */
    password: string;
    /** Authorization identity (PLAIN's authzid, EXTERNAL's whole response). */
    authzid: string;
  };
  builtin: BuiltinAuthDecision;
}

/** The built-in sender binding's decision (listener `senderLogin`) for this MAIL FROM. */
export interface BuiltinSenderDecision {
  accepted: boolean;
  /** Accepted: `not-enforced`, `not-authenticated`, `own-address`, `listed`, `null-sender-allowed`; refused: `sender-login-mismatch`, `null-sender`. */
  reason: 'not-enforced' | 'not-authenticated' | 'own-address' | 'listed' | 'null-sender-allowed' | 'sender-login-mismatch' | 'null-sender';
}

/** mailfrom: MAIL FROM received. Default: the built-in sender binding (accept unless `senderLogin.enforce` refuses). */
export interface MailFromContext {
  connection: ConnectionInfo;
  transaction: TransactionInfo;
  address: EnvelopeAddress;
  builtin: BuiltinSenderDecision;
  /** Only from a Postfix policy service. */
  postfix?: PostfixPolicyRequest;
}

/** The built-in relay rule's decision for this recipient. */
export interface BuiltinRelayDecision {
  accepted: boolean;
  /**
   * Accepted: `postmaster` (the bare `<postmaster>`), `local-domain`, `authenticated`, `client-certificate`; refused:
   * `unknown-recipient` (a local domain's address that `localRecipients` does not list: `550 5.1.1` unless the script
   * accepts), `relay-denied`.
   */
  reason: 'postmaster' | 'local-domain' | 'authenticated' | 'client-certificate' | 'unknown-recipient' | 'relay-denied';
}

/** rcptto: RCPT TO received. Default: the built-in relay rule. */
export interface RcptToContext {
  connection: ConnectionInfo;
  transaction: TransactionInfo;
  address: EnvelopeAddress;
  builtin: BuiltinRelayDecision;
  /** Only from a Postfix policy service. */
  postfix?: PostfixPolicyRequest;
}

/** data: the whole message has arrived (end of DATA), before it is spooled. Default: accept. */
export interface DataContext {
  connection: ConnectionInfo;
  transaction: TransactionInfo;
  data: {
    /** Size in bytes as received. */
    size: number;
    /** Header fields in order, `[name, value]`, unfolded. */
    headers: Array<[string, string]>;
  };
  /**
   * The message's body, read only when asked (a script that does not ask costs no copy). From a Postfix policy
   * request (`connection.source` `postfix-policy`) there is none: `text()` throws, and the call fails closed.
   */
  message: MessageBody;
  /** Only from a Postfix policy service. */
  postfix?: PostfixPolicyRequest;
}

/** The body of the message at end of DATA (everything after the header section's empty line). */
export interface MessageBody {
  /**
   * The first `maxBytes` bytes of the body (1 to 1 048 576; default 65 536) as text, decoded as UTF-8
   * (bytes that are not UTF-8, and a character cut at the limit, read as U+FFFD), as sent: transfer
   * encodings are not decoded, and every line end is CRLF, as the next hop receives it (a bare CR or bare LF
   * the client sent is a line end there, so it is one here). Readable only while the data hook runs.
   * Read-only, as `ctx.connection` is: the object is frozen.
   */
  readonly text: (maxBytes?: number) => Promise<string>;
}

/** A short summary of the certificate the original client presented, kept in the queue. */
export interface CertificateSummary {
  subject: string;
  issuer: string;
  fingerprintSha256: string;
  pinSha256: string;
  verified: boolean;
  verifyError: ChainFailureReason | null;
}

/** predelivery: the queue is about to deliver the recipients of one domain (once per attempt). Default: deliver by the configured route. */
export interface PredeliveryContext {
  message: {
    id: string;
    sender: string;
    /** Recipients of this attempt (all in one domain). */
    recipients: string[];
    size: number;
    /** 1 on the first attempt. */
    attempt: number;
    /** Replies or errors of earlier attempts, oldest first. */
    previousErrors: string[];
    /** When the message was accepted (ISO 8601). */
    receivedAt: string;
  };
  /** The destination the default route chose. */
  destination: { host: string; port: number; implicitTls: boolean; domain: string; kind: 'smarthost' | 'mx' };
  /** Facts about the session that submitted the message. */
  session: {
    listener: string;
    remoteAddress: string;
    helo: string | null;
    authenticatedUser: string | null;
    clientCertificate: CertificateSummary | null;
  };
}

/**
 * Connection and transaction facts, as copied into each hook's context. The connection's facts are read-only
 * (`readonly`, deeply: the sandbox freezes them, so an assignment or an in-place `sort()` throws); the transaction's
 * are the call's own copy.
 */
import type { PeerCertificate, PostfixClientCertificate } from './certificate.ts';

export interface TlsInfo {
  /** e.g. `TLSv1.3`. */
  readonly protocol: string;
  /** OpenSSL cipher name, e.g. `TLS_AES_256_GCM_SHA384`. */
  readonly cipher: string;
  /** Server name the client asked for (SNI), if any. */
  readonly sni: string | null;
  /** How TLS started on this connection. */
  readonly mode: 'starttls' | 'implicit';
}

export interface AuthInfo {
  /** The identity the session is logged in as. */
  readonly username: string;
  /** `EXTERNAL`, `PLAIN`, `LOGIN`, or `CERTIFICATE` when the certificate logged the session in without AUTH. */
  readonly mechanism: string;
}

/** What every hook knows of the connection, whichever `source` the facts come from. */
export interface ConnectionFacts {
  /** Connection id, also in every log line of this connection. */
  readonly id: string;
  /** The client's address (an IPv4 client of a dual-stack listener as a.b.c.d); behind a load balancer with `proxyProtocol`, the client its header names. */
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** The address the client connected to; behind a load balancer with `proxyProtocol`, the balancer's its header names. */
  readonly localAddress: string;
  readonly localPort: number;
  /** Name of the listener (from the configuration) that accepted the connection. */
  readonly listener: string;
  /** The HELO/EHLO name, once given. */
  readonly helo: string | null;
  /** Set once the session has authenticated. */
  readonly auth: AuthInfo | null;
  /** Set once TLS is up. */
  readonly tls: TlsInfo | null;
  /**
   * The account the certificate maps to under the listener's `certificateIdentity` setting (field of a
   * verified certificate, or a pin table), or `null`.
   */
  readonly certificateIdentity: string | null;
}

/** A client of Postern's own SMTP listener: the whole certificate, every field filled. */
export interface SmtpConnectionInfo extends ConnectionFacts {
  readonly source: 'smtp';
  /**
   * The client's certificate, when one was presented in the TLS handshake. Its names are whatever the client
   * put there unless `verified` is true (a self-made certificate may say `CN=alice@example.com`, or carry two
   * CNs): to know who it is, use `certificateIdentity`, which reads a field only from a verified chain.
   */
  readonly clientCertificate: PeerCertificate | null;
}

/**
 * A Postfix `check_policy_service` request (policyServices): `listener` is the service's name,
 * `localAddress`/`localPort` are Postfix's server address and the certificate is what Postfix sent.
 */
export interface PolicyServiceConnectionInfo extends ConnectionFacts {
  readonly source: 'postfix-policy';
  /** Only subject and issuer CN, one digest of fingerprints, the rest null. */
  readonly clientCertificate: PostfixClientCertificate | null;
}

/**
 * Connection facts. Checking `source` (`smtp` or `postfix-policy`) narrows `clientCertificate`: from
 * SMTP it is a full PeerCertificate (no null fingerprints), from a Postfix policy request what Postfix sent.
 */
export type ConnectionInfo = SmtpConnectionInfo | PolicyServiceConnectionInfo;

/** An envelope address, split for convenience. */
export interface EnvelopeAddress {
  /**
   * The whole address (empty string for the null sender `<>`), in one canonical form: a quoted local part that
   * needs no quotes unquoted (`"ceo"@x` is `ceo@x`), an IDN domain in A-labels (in U-labels in an SMTPUTF8
   * transaction), a UTF-8 local part in NFC.
   */
  address: string;
  /** Part before the last `@`. */
  localPart: string;
  /** Part after the last `@`, lowercased. */
  domain: string;
  /**
   * The domain in its A-labels, lowercased (`xn--bcher-kva.example`), whichever form the address has: an ASCII
   * transaction carries an IDN in A-labels and an SMTPUTF8 one in U-labels, so `domain` gives one domain two keys
   * (a `rate()` per domain counted twice over, a comparison that misses one). The one spelling to key and compare by.
   */
  asciiDomain: string;
  /** ESMTP parameters (`SIZE`, `BODY`, `NOTIFY` …), upper-case keys; `true` for a parameter without value. */
  params: Record<string, string | true>;
}

export interface TransactionInfo {
  /** Queue id the message will get when accepted. */
  id: string;
  sender: EnvelopeAddress | null;
  /** Recipients accepted so far. */
  recipients: EnvelopeAddress[];
}

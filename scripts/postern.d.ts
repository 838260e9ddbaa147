// generated from engine/sandbox/api — do not edit (node engine/sandbox/api/generate-dts.ts)
//
// Types for Postern policy scripts. A script imports what it needs, e.g.
//   import type { AuthContext, Verdict } from "postern";
// and uses the helper globals (accept, reject, defer, deliver, lookup, log, sha256, …) directly.

declare module "postern" {
  // ---- certificate.ts

  /**
   * What a policy script sees of a TLS peer (client) certificate. Plain data, copied into the
   * sandbox when the hook starts; the private key never exists here. Read-only (frozen, with the connection).
   */

  /** A distinguished name, whole and split into attributes. */
  export interface DistinguishedName {
    /** RFC 4514 string, most specific attribute first, e.g. `CN=alice,O=Example`. */
    readonly dn: string;
    /**
     * Common name: the first in DER order, as OpenSSL (Postfix, Dovecot) picks it. A subject may hold several
     * CNs (see `attributes`); which one a CA checked is unknown, so `certificateIdentity` takes none of them then.
     * Likewise for every field here.
     */
    readonly CN?: string;
    /** Organisation. */
    readonly O?: string;
    /** Organisational unit. */
    readonly OU?: string;
    /** Country. */
    readonly C?: string;
    /** State or province. */
    readonly ST?: string;
    /** Locality. */
    readonly L?: string;
    /** PKCS#9 emailAddress attribute (what Dovecot's `ssl_cert_username_field = emailAddress` reads). */
    readonly emailAddress?: string;
    /** Every attribute in order as `[shortName, value]` (multi-valued names appear more than once). */
    readonly attributes: ReadonlyArray<readonly [string, string]>;
  }

  /** Why a chain did not verify. `null` when it did. */
  export type ChainFailureReason =
    | 'expired'
    | 'not-yet-valid'
    | 'revoked'
    | 'self-signed'
    | 'unknown-issuer'
    | 'bad-signature'
    | 'crl-missing'
    | 'no-ca-configured'
    | 'invalid';

  /** Fingerprints over the DER certificate: lowercase hex, and Postfix's uppercase colon form. */
  export interface Fingerprints {
    readonly sha1: string;
    readonly sha256: string;
    readonly md5: string;
    /** Postfix form, e.g. `5B:57:FE:...` (`openssl x509 -fingerprint`). */
    readonly sha1Colon: string;
    readonly sha256Colon: string;
    readonly md5Colon: string;
  }

  /**
   * Digests of the DER SubjectPublicKeyInfo: the key identity mox and Postfix pubkey pins use (SHA-256). Postfix
   * computes its `pkey_fingerprint` in its `smtpd_tls_fingerprint_digest`, md5 below compatibility_level 3.6: a
   * `relay_clientcerts` or `check_ccert_access` table of that time holds MD5 public-key fingerprints.
   */
  export interface PublicKeyPin {
    /** Lowercase hex. */
    readonly sha256: string;
    /** Postfix `pkey_fingerprint` form: uppercase colon hex. */
    readonly sha256Colon: string;
    /** Standard base64 with padding (HPKP style). */
    readonly sha256Base64: string;
    /** base64url without padding (mox's TLS public key fingerprint). */
    readonly sha256Base64Url: string;
    /** SHA-1 and MD5 of the SubjectPublicKeyInfo, lowercase hex and Postfix's colon form (`smtpd_tls_fingerprint_digest = sha1 / md5`). */
    readonly sha1: string;
    readonly sha1Colon: string;
    readonly md5: string;
    readonly md5Colon: string;
  }

  export interface PeerCertificate {
    readonly subject: DistinguishedName;
    readonly issuer: DistinguishedName;
    /** Subject alternative names. */
    readonly san: { readonly email: readonly string[]; readonly dns: readonly string[]; readonly ip: readonly string[]; readonly uri: readonly string[] };
    /** Serial number: the INTEGER's magnitude in lowercase hex (`openssl x509 -serial` in upper case), without DER's 00 sign byte. */
    readonly serial: string;
    /** ISO 8601 timestamps. */
    readonly notBefore: string;
    readonly notAfter: string;
    /** Node's `asymmetricKeyType`: `rsa`, `rsa-pss`, `ec`, `ed25519`, `ed448` … */
    readonly keyType: string;
    /** Key size in bits (RSA modulus, EC curve size); 0 when not meaningful. */
    readonly keyBits: number;
    readonly fingerprint: Fingerprints;
    readonly pin: PublicKeyPin;
    /** The certificate in PEM form. */
    readonly pem: string;
    /** True when the chain verified against the listener's CA bundle and CRLs. */
    readonly verified: boolean;
    /** Why it did not verify; `null` when verified. */
    readonly verifyError: ChainFailureReason | null;
    /** The underlying OpenSSL error code, e.g. `CERT_HAS_EXPIRED`; `null` when verified. */
    readonly verifyErrorCode: string | null;
  }

  /**
   * A client certificate as Postfix describes it to a policy service (`ctx.connection.source` is
   * `postfix-policy`): only what `ccert_subject`, `ccert_issuer`, `ccert_fingerprint` and
   * `ccert_pubkey_fingerprint` carry. Postfix sends the certificate's fingerprints in one digest
   * (`smtpd_tls_fingerprint_digest`, named by the service's `fingerprintDigest`): the others are null, and
   * `pin` is filled only with sha256. Fields Postfix never sends (SANs, dates, serial, key, PEM) are null.
   */
  export interface PostfixClientCertificate {
    /** Postfix's subject CN (sent as xtext, decoded here) as `CN=<cn>`; empty (`dn: ''`) when Postfix did not verify the certificate (it sends no subject then). */
    readonly subject: DistinguishedName;
    /** The issuer's CN, likewise. */
    readonly issuer: DistinguishedName;
    readonly san: null;
    readonly serial: null;
    readonly notBefore: null;
    readonly notAfter: null;
    readonly keyType: null;
    readonly keyBits: null;
    readonly fingerprint: { readonly [K in keyof Fingerprints]: string | null };
    readonly pin: { readonly [K in keyof PublicKeyPin]: string | null };
    /** The digest Postfix used. */
    readonly digest: 'sha256' | 'sha1' | 'md5';
    /** `ccert_pubkey_fingerprint` as Postfix sent it (colon hex in `digest`), or null. */
    readonly publicKeyFingerprint: string | null;
    readonly pem: null;
    /** Postfix verified the chain against its own CA files (it sent the subject and issuer), and `pki.dir` has not revoked it. */
    readonly verified: boolean;
    /** `invalid` when Postfix did not verify it (Postfix does not say why); `revoked` when `pki.dir` revoked it (matched by its fingerprints: Postfix checks no CRL); null when verified. */
    readonly verifyError: ChainFailureReason | null;
    /** `POSTFIX_NOT_VERIFIED`, `CERT_REVOKED`, or null when verified. */
    readonly verifyErrorCode: string | null;
  }

  // ---- session.ts

  /**
   * Connection and transaction facts, as copied into each hook's context. The connection's facts are read-only
   * (`readonly`, deeply: the sandbox freezes them, so an assignment or an in-place `sort()` throws); the transaction's
   * are the call's own copy.
   */

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

  // ---- verdicts.ts

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

  // ---- contexts.ts

  /**
   * One context type per hook. Hook order on a connection:
   * connect → (TLS) → helo → auth → mailfrom → rcptto (once per recipient) → data; predelivery runs in the
   * queue, once per delivery attempt and recipient domain. Every context is a copy taken when the hook starts.
   */

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

  // ---- helpers.ts

  /**
   * Functions available as globals inside the sandbox. Hashing, lookups, logging, counters and DNS are carried out by the
   * host; nothing else (process, require, fs, network, timers) exists in a script's world.
   */

  /** What rate() answers. */
  export interface RateResult {
    /** True when this call was within the limit; it was then counted. */
    readonly allowed: boolean;
    /** Calls counted in the current window, this one included when allowed. */
    readonly count: number;
    /** Seconds until the window ends and the count starts again from 0. */
    readonly resetSeconds: number;
  }

  /** A named counter in the store (see counter()). Frozen, as rate()'s answers and `dns` are: read-only here. */
  export interface Counter {
    /** Its value; 0 when it does not exist or has expired. */
    readonly get: () => Promise<number>;
    /** Add `n` (a whole number, may be negative); a new counter expires `ttlSeconds` after this first add. The new value. */
    readonly add: (n: number, ttlSeconds: number) => Promise<number>;
  }

  /** An MX record of dns.resolve(name, 'MX'). */
  export interface MxRecord {
    /** Host name, lowercase, without the trailing dot. */
    exchange: string;
    priority: number;
  }

  /** Why a lookup has no answer: no reply in time, SERVFAIL, REFUSED, not a domain name, anything else. */
  export type DnsFailure = 'timeout' | 'servfail' | 'refused' | 'badname' | 'error';

  /**
   * What dns.resolve() answers. `ok: true` is an answer from DNS — also "no such name" (`nxdomain: true`, no
   * records) and "no record of this type" (no records). `ok: false`: the answer is unknown.
   */
  export type DnsResult<R> =
    | {
      ok: true;
      records: R[];
      /** Seconds the answer may still be kept (A and AAAA); null where node:dns gives no TTL (MX, TXT, PTR, no records). */
      ttl: number | null;
      nxdomain: boolean;
    }
    | { ok: false; error: DnsFailure; message: string };

  /** What dnsbl() answers. */
  export type DnsblResult =
    | {
      ok: true;
      /** An A record in 127.0.0.0/8 was found for the address. */
      listed: boolean;
      /** The A records found (each list says what its codes mean). */
      codes: string[];
      /** The name asked, e.g. `2.0.0.127.zen.example` (for a TXT lookup of the reason). */
      query: string;
    }
    | { ok: false; error: DnsFailure; message: string; query: string };

  /** Per call: a shorter timeout than `dns.timeoutMs`, or a rejection instead of `ok: false`. */
  export interface DnsOptions {
    /** Milliseconds, 1 to 60000; never more than `dns.timeoutMs`. */
    timeoutMs?: number;
    /** Reject (an Error naming the failure) instead of answering `ok: false`; uncaught, the hook fails closed. */
    throw?: boolean;
  }

  /** The `dns` global: lookups on the configured servers (`dns.servers`), cached (see docs/scripts.md § DNS). */
  export interface Dns {
    readonly resolve: {
      /** A, AAAA, TXT (each record's strings joined) or PTR (`name` may be an IP address) records. */
      (name: string, type: 'A' | 'AAAA' | 'TXT' | 'PTR', options?: DnsOptions): Promise<DnsResult<string>>;
      /** MX records, lowest priority first. */
      (name: string, type: 'MX', options?: DnsOptions): Promise<DnsResult<MxRecord>>;
    };
  }

  export interface PosternHelpers {
    /** Hex digest of a UTF-8 string. */
    sha1(data: string): string;
    sha256(data: string): string;
    md5(data: string): string;
    /** Hex HMAC of `data` with `key`. */
    hmac(algorithm: 'sha1' | 'sha256' | 'sha512' | 'md5', key: string, data: string): string;
    /**
     * Value for `key` in the lookup table `table` (declared under `tables` in the configuration), or null.
     * A null or undefined key (a fingerprint Postfix did not send) finds nothing.
     */
    lookup(table: string, key: string | null | undefined): string | null;
    /**
     * Count one call of `key` when fewer than `limit` were counted in its window (a fixed window of
     * `windowSeconds` that opens with the first counted call). Kept in the configured store (memory or Redis),
     * so every script, listener and — with Redis — server sharing the store counts together. Rejects when the
     * store cannot answer (unreachable, `store.redis.timeoutMs`): uncaught, the hook fails closed (451 4.3.0).
     * `key`: 1 to 1024 characters; `limit`: 1 to 10⁹; `windowSeconds`: 1 to 31 622 400 (366 days).
     */
    rate(key: string, limit: number, windowSeconds: number): Promise<RateResult>;
    /** The counter `key` of the store (scripts' counters are apart from rate()'s keys). */
    counter(key: string): Counter;
    /** DNS lookups (A, AAAA, MX, TXT, PTR). Failures are results (`ok: false`), unless `{ throw: true }`. */
    dns: Dns;
    /**
     * Is `ip` (IPv4 or IPv6) listed in the DNS blocklist `zone` (e.g. `zen.spamhaus.org`)? Asks the A record
     * of the reversed address under the zone (an IPv4-mapped address, `::ffff:192.0.2.1`, as its IPv4 address).
     * An answer in 127.255.255.0/24 (the list refusing this resolver)
     * is `{ ok: false, error: "refused" }`, never a listing.
     */
    dnsbl(zone: string, ip: string, options?: DnsOptions): Promise<DnsblResult>;
    /** Log a line to the server log, tagged with the connection id and script file. */
    log(...args: unknown[]): void;
    /** Verdict builders. */
    /** `headers`: the data hook's header edits (see HeaderEdit); `hold`: the data hook's hold (see AcceptVerdict). */
    accept(options?: { username?: string; text?: string; headers?: HeaderEdit[]; hold?: string }): AcceptVerdict;
    reject(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): RejectVerdict;
    defer(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): DeferVerdict;
    deliver(options?: Omit<DeliverVerdict, 'verdict'>): DeliverVerdict;
  }

  // ---- index.ts

  /**
   * The script-facing API: source of truth for scripts/postern.d.ts. Types only; nothing here runs.
   */

  /**
   * What a hook may return: a verdict, nothing (`undefined` or `null`: the default decides), or a promise of either
   * (an `async` hook, or one that returns a promise).
   */
  export type HookResult<V> = V | null | void | Promise<V | null | void>;

  /** Hook name → the signature of the default export of the script file of that name. */
  export interface PolicyHooks {
    connect(ctx: ConnectContext): HookResult<Verdict>;
    helo(ctx: HeloContext): HookResult<Verdict>;
    auth(ctx: AuthContext): HookResult<Verdict>;
    mailfrom(ctx: MailFromContext): HookResult<Verdict>;
    rcptto(ctx: RcptToContext): HookResult<Verdict>;
    data(ctx: DataContext): HookResult<Verdict>;
    predelivery(ctx: PredeliveryContext): HookResult<PredeliveryVerdict>;
  }

  export type HookName = keyof PolicyHooks;

  // ---- helper globals

  global {
    /** Hex digest of a UTF-8 string. */
    function sha1(data: string): string;
    function sha256(data: string): string;
    function md5(data: string): string;
    /** Hex HMAC of `data` with `key`. */
    function hmac(algorithm: 'sha1' | 'sha256' | 'sha512' | 'md5', key: string, data: string): string;
    /**
       * Value for `key` in the lookup table `table` (declared under `tables` in the configuration), or null.
       * A null or undefined key (a fingerprint Postfix did not send) finds nothing.
       */
    function lookup(table: string, key: string | null | undefined): string | null;
    /**
       * Count one call of `key` when fewer than `limit` were counted in its window (a fixed window of
       * `windowSeconds` that opens with the first counted call). Kept in the configured store (memory or Redis),
       * so every script, listener and — with Redis — server sharing the store counts together. Rejects when the
       * store cannot answer (unreachable, `store.redis.timeoutMs`): uncaught, the hook fails closed (451 4.3.0).
       * `key`: 1 to 1024 characters; `limit`: 1 to 10⁹; `windowSeconds`: 1 to 31 622 400 (366 days).
       */
    function rate(key: string, limit: number, windowSeconds: number): Promise<RateResult>;
    /** The counter `key` of the store (scripts' counters are apart from rate()'s keys). */
    function counter(key: string): Counter;
    /** DNS lookups (A, AAAA, MX, TXT, PTR). Failures are results (`ok: false`), unless `{ throw: true }`. */
    const dns: Dns;
    /**
       * Is `ip` (IPv4 or IPv6) listed in the DNS blocklist `zone` (e.g. `zen.spamhaus.org`)? Asks the A record
       * of the reversed address under the zone (an IPv4-mapped address, `::ffff:192.0.2.1`, as its IPv4 address).
       * An answer in 127.255.255.0/24 (the list refusing this resolver)
       * is `{ ok: false, error: "refused" }`, never a listing.
       */
    function dnsbl(zone: string, ip: string, options?: DnsOptions): Promise<DnsblResult>;
    /** Log a line to the server log, tagged with the connection id and script file. */
    function log(...args: unknown[]): void;
    /** `headers`: the data hook's header edits (see HeaderEdit); `hold`: the data hook's hold (see AcceptVerdict). */
    function accept(options?: { username?: string; text?: string; headers?: HeaderEdit[]; hold?: string }): AcceptVerdict;
    function reject(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): RejectVerdict;
    function defer(text?: string, options?: { code?: number; enhanced?: string; disconnect?: boolean }): DeferVerdict;
    function deliver(options?: Omit<DeliverVerdict, 'verdict'>): DeliverVerdict;
  }
}

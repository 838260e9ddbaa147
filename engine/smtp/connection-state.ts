/**
 * Postern's per-connection state, beside smtp-server's session. Declared in one place so every fact a
 * hook may rely on is visible here.
 */
import type { PeerCertificate } from '../sandbox/api/index.ts';
import type { TrustedIssuers } from '../certificates/index.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import type { ListenerConfig } from '../config/schema.ts';
import type { CertificateIdentity } from '../policy/certificate-identity.ts';
import { NO_IDENTITY } from '../policy/certificate-identity.ts';
import type { SMTPServerAddress, SMTPServerSession } from 'smtp-server';
import type { EnvelopeAddress } from '../sandbox/api/index.ts';
import type { GrowingList } from '../sandbox/index.ts';
import type { ConnectionInfo } from '../sandbox/api/index.ts';
import type { SpoolEnvelope } from '../spool/envelope.ts';
import type { OverLimit } from '../connection-limits/over-limit-recount.ts';
import type { SmtpReply } from './reply.ts';

export class ConnectionState {
  /** The generation in force at the session's last command outside a transaction (a transaction keeps the one it began with). */
  generation: PolicyGeneration;
  /** The listener's configuration in that generation. */
  listener: ListenerConfig;
  heloName: string | null = null;
  heloCommand: 'HELO' | 'EHLO' = 'EHLO';
  tlsMode: 'starttls' | 'implicit' | null = null;
  /** The described client certificate (null: none presented, or TLS not up). */
  certificate: PeerCertificate | null = null;
  /** The certificate was requested (Received header: "did not present" vs "not requested"). */
  certificateRequested = false;
  identity: CertificateIdentity = NO_IDENTITY;
  /** The listener's certificateIdentity settings `identity` was found under: a reload that replaces them has it found again. */
  identityRules: ListenerConfig['certificateIdentity'] | null = null;
  /** The listener's CA list the certificate was verified against (replaced by a reload: checked again at MAIL FROM). */
  certificateTrust: TrustedIssuers | null = null;
  /**
   * The CRLs (TrustedIssuers) the certificate was last found not revoked by: CRLs change only with a reload, so each
   * command asks them again only once they were replaced (a serial they list costs a read and an OpenSSL parse).
   */
  notRevokedBy: TrustedIssuers | null = null;
  /**
   * The listener's CA list when the TLS handshake began: its context is chosen at the ClientHello, and the client's
   * certificate comes a round trip later, as late as the client likes. A reload in between leaves a verdict made
   * with this list (session-policy.ts checks it against the new one).
   */
  handshakeTrust: TrustedIssuers | null = null;
  /** Authenticated user and how. */
  user: string | null = null;
  mechanism: string | null = null;
  /**
   * The users-file entry a password login was checked against (the built-in rule decided it): a reload that
   * changes or removes it withdraws the login (as a CRL withdraws a certificate) at the next MAIL FROM. Null for any other login.
   */
  passwordEntry: string | null = null;
  /** A SASL AUTH succeeded (only one is allowed, RFC 4954 §4). */
  saslAuthenticated = false;
  authFailures = 0;
  /**
   * Postfix's error and junk counts (smtpd_hard_error_limit, smtpd_junk_command_limit): refusals sent, junk
   * commands (NOOP, RSET, HELO …) and RCPTs over maxRecipients, since the connection began or its last accepted message.
   */
  errors = 0;
  junkCommands = 0;
  /** Messages accepted on this connection (limits.maxMessagesPerConnection). */
  messagesAccepted = 0;
  recipientOvershoot = 0;
  /** Queue id of the current transaction (set at MAIL FROM). */
  transactionId: string | null = null;
  /**
   * limits.connectionRatePerIp decided before the TLS handshake (implicit TLS), not again at connect: null,
   * counted and allowed; a reply, the refusal for a store that could not answer. Undefined: not decided yet.
   */
  connectionRateDecided: SmtpReply | null | undefined = undefined;
  /** Accepted over the listener's per-IP connection limit: refused with 421 at connect. */
  overIpLimit = false;
  /** With overIpLimit: its count, lowered as connections counted before it close (recounted at connect). */
  ipCountNow: OverLimit | null = null;
  /** Accepted over the listener's maxConnections counted over every worker process (postern serve): 421 at connect. */
  overListenerLimit = false;
  /**
   * Connections of its address when it was accepted, itself included, over every worker of postern serve (the
   * supervisor's count): what listener-room.ts holds it to, as a worker sees only its own. 0: not counted.
   */
  addressOpenAtAccept = 0;
  /** Its address as counted (countedAddress: an IPv6 client's network), set when it was accepted. */
  countedAddress: string | null = null;
  /** Takes the connection off its address's count (idempotent). */
  uncountIp: (() => void) | null = null;
  /**
   * The PROXY header said the balancer speaks for itself (v2 LOCAL, v1 UNKNOWN: its health checks): not a
   * client, and not held to connectionRatePerIp under the balancer's address.
   */
  fromBalancer = false;
  /** Gives back the connection's slot in the store (limits.connectionsPerIpInStore), once. */
  releaseSlot: (() => void) | null = null;
  /** The session closed (a slot taken after that goes back at once). */
  closed = false;
  /** Postern closed the connection without sending its refusal (tls.strict): a refusal still, though unsent. */
  closedUnanswered = false;
  /** The connection facts scripts see, and what they were built from (see sharedConnectionFacts()). */
  factsMemo: FactsMemo | null = null;
  /** The transaction's recipients as scripts see them, kept up to date one RCPT at a time (see recipientsView()). */
  recipientsMemo: RecipientsMemo | null = null;
  /** The start of the Received header (up to the queue id) and the spool envelope's session, and the facts they were built from. */
  receivedClient: {
    facts: FactsMemo; heloCommand: 'HELO' | 'EHLO'; clientHostname: string | null; remoteAddress: string; hostname: string;
    /** Built for an SMTPUTF8 transaction (UTF-8 allowed, UTF8SMTP protocol) or not (7-bit). */
    utf8: boolean;
    receivedStart: Buffer; spooled: SpoolEnvelope['session'];
  } | null = null;

  constructor(generation: PolicyGeneration, listener: ListenerConfig) {
    this.generation = generation;
    this.listener = listener;
  }

  /** Forget what STARTTLS must forget (RFC 3207 §4.2); certificate facts come from TLS and are set anew. */
  resetForStartTls(): void {
    this.heloName = null;
    this.user = null;
    this.mechanism = null;
    this.passwordEntry = null;
    this.saslAuthenticated = false;
    this.transactionId = null;
  }
}

/** What recipientsView() (script-context.ts) built the recipients scripts see from, with the list. */
export interface RecipientsMemo {
  /** smtp-server's list (a new array for each transaction), and its entries each item was made from. */
  rcptTo: SMTPServerAddress[];
  parsed: SMTPServerAddress[];
  list: GrowingList<EnvelopeAddress>;
  /** Index of each address, lower-cased (as smtp-server finds a repeated recipient to replace it), once the list is long. */
  index: Map<string, number> | null;
  /** The RCPT of the last rcptto call: the only entry smtp-server may have replaced since. */
  pending: SMTPServerAddress | null;
}

/** What sharedConnectionFacts() (script-context.ts) built its facts from, with the facts. */
export interface FactsMemo {
  session: SMTPServerSession;
  /** Fixed for a connection unless XCLIENT (off) rewrites them: compared all the same. */
  remoteAddress: string;
  remotePort: number;
  secure: boolean;
  tlsOptions: unknown;
  servername: unknown;
  listener: ConnectionState['listener'];
  helo: string | null;
  user: string | null;
  mechanism: string | null;
  tlsMode: ConnectionState['tlsMode'];
  certificate: ConnectionState['certificate'];
  identity: ConnectionState['identity'];
  info: ConnectionInfo;
  key: string;
}

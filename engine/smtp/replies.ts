/**
 * Every reply Postern decides, by name: code, enhanced status code (RFC 3463), default text and, for a
 * refusal, the reason the decision log gives (decision-log.ts). `{name}` marks a value filled in when
 * the reply is made; docs/scripts.md shows it as `<name>`. Nothing else builds an SmtpReply: the
 * built-in rules and limits name their reply here, and script verdicts go through verdict-replies.ts.
 * test/smtp/reply-catalogue.test.ts checks that this list and docs/scripts.md agree.
 */
import { SmtpReply } from './reply.ts';

export interface ReplySpec {
  readonly code: number;
  readonly enhanced: string;
  readonly text: string;
  /** Why, for the log line: required for a refusal (4xx/5xx). */
  readonly reason?: string;
}

export const REPLIES = {
  // Connection limits and client certificates, before the greeting (or right after STARTTLS).
  tooManyClients: { code: 421, enhanced: '4.7.0', text: '{hostname} Too many connected clients, try again in a moment', reason: 'limits.maxConnections' },
  closedForAnotherClient: { code: 421, enhanced: '4.7.0', text: '{hostname} Too many connected clients, this idle connection is closed for another client', reason: 'limits.maxConnections: closed for a client of an address holding fewer' },
  closedIdleForAnotherClient: { code: 421, enhanced: '4.7.0', text: '{hostname} Too many connected clients, this connection idle for {seconds} s is closed for another client', reason: 'limits.idleWhenFullMs: idle {seconds} s, {mail}, while the listener was full (at least {min} ms): closed for another client' },
  tooManyConnectionsFromAddress: { code: 421, enhanced: '4.7.0', text: 'Too many connections from your address', reason: 'limits.maxConnectionsPerIp' },
  connectionRateFromAddress: { code: 421, enhanced: '4.7.0', text: 'Error: too many connections from {ip}, try again later', reason: 'limits.connectionRatePerIp' },
  connectionRateStoreUnavailable: { code: 421, enhanced: '4.7.0', text: 'Connection rate cannot be checked, try again later', reason: 'limits.connectionRatePerIp: store unavailable (fail closed)' },
  connectionLimitStoreUnavailable: { code: 421, enhanced: '4.7.0', text: 'Connection limit cannot be checked, try again later', reason: 'limits.connectionsPerIpInStore: store unavailable (fail closed)' },
  tooManyErrors: { code: 421, enhanced: '4.7.0', text: '{hostname} Error: too many errors', reason: 'limits.maxErrors' },
  listenerRemoved: { code: 421, enhanced: '4.3.2', text: 'Service not available, closing transmission channel', reason: 'listener removed from the configuration by a reload (its port is closed at the next restart)' },
  shuttingDown: { code: 421, enhanced: '4.4.2', text: 'Server shutting down', reason: 'the server is stopping' },
  tooManyAuthFailures: { code: 421, enhanced: '4.7.0', text: 'Too many authentication failures, try again later', reason: 'limits.authFailuresPerIp' },
  certificateNotTrustedStrict: { code: 421, enhanced: '4.7.1', text: 'Client certificate not trusted', reason: 'tls.strict: untrusted client certificate' },
  certificateRequiredNotTrusted: { code: 421, enhanced: '4.7.1', text: 'Client certificate not trusted ({verifyError})', reason: 'tls.clientCertificates: require' },
  certificateRequiredMissing: { code: 421, enhanced: '4.7.1', text: 'No client certificate presented', reason: 'tls.clientCertificates: require' },
  // A client that talks before the greeting (RFC 5321 §3.1: the server speaks first), in smtp-server's words
  // (smtp-server-replies.ts); {heldBy}: what held the greeting back when it talked.
  talkedTooSoon: { code: 421, enhanced: '4.5.0', text: '{hostname} You talk too soon', reason: '{heldBy}: the client talked before the greeting' },

  // Any command.
  badUtf8: { code: 500, enhanced: '5.5.2', text: 'Error: bad UTF-8 syntax', reason: 'a command that is not UTF-8' },
  // DATA and RSET take no argument (RFC 5321 §4.1.1.4, §4.1.1.5); Postfix's words. QUIT with one still ends the session.
  dataSyntax: { code: 501, enhanced: '5.5.4', text: 'Syntax: DATA', reason: 'DATA with an argument (RFC 5321 §4.1.1.4)' },
  rsetSyntax: { code: 501, enhanced: '5.5.4', text: 'Syntax: RSET', reason: 'RSET with an argument (RFC 5321 §4.1.1.5)' },
  // smtp-server's own refusals, in its words (smtp-server-replies.ts sends these in their place, with their reasons).
  commandNotRecognized: { code: 500, enhanced: '5.5.2', text: 'Error: command not recognized', reason: 'a command not recognized (RFC 5321 §4.2.4)' },
  heloFirst: { code: 503, enhanced: '5.5.1', text: 'Error: send HELO/EHLO first', reason: 'MAIL, RCPT, DATA or AUTH before an accepted HELO/EHLO (RFC 5321 §4.1.4)' },
  needMail: { code: 503, enhanced: '5.5.1', text: 'Error: need MAIL command', reason: 'RCPT before MAIL (RFC 5321 §4.1.4)' },
  needRcpt: { code: 503, enhanced: '5.5.1', text: 'Error: need RCPT command', reason: 'DATA without an accepted recipient (RFC 5321 §4.1.4)' },
  nestedMail: { code: 503, enhanced: '5.5.1', text: 'Error: nested MAIL command', reason: 'MAIL within a transaction (RFC 5321 §4.1.4)' },
  senderSyntax: { code: 501, enhanced: '5.1.7', text: 'Error: Bad sender address syntax', reason: 'MAIL FROM: a path that does not parse (RFC 5321 §4.1.2)' },
  recipientSyntax: { code: 501, enhanced: '5.1.3', text: 'Error: Bad recipient address syntax', reason: 'RCPT TO: a path that does not parse (RFC 5321 §4.1.2)' },
  // HELO and EHLO refusals carry an enhanced code too, as Postfix's: RFC 2034 §3 does not require one in a reply to
  // HELO or EHLO, and smtp-server left it out.
  heloSyntax: { code: 501, enhanced: '5.5.4', text: 'Error: Syntax: HELO hostname', reason: 'HELO/EHLO without exactly one argument (RFC 5321 §4.1.1.1)' },
  ehloSyntax: { code: 501, enhanced: '5.5.4', text: 'Error: syntax: EHLO hostname', reason: 'HELO/EHLO without exactly one argument (RFC 5321 §4.1.1.1)' },
  heloNameSyntax: { code: 501, enhanced: '5.5.2', text: 'Error: Bad hostname syntax', reason: 'HELO/EHLO with a name holding a control character, or over 300 characters (RFC 5321 §4.1.1.1)' },
  starttlsSyntax: { code: 501, enhanced: '5.5.4', text: 'Error: syntax: STARTTLS', reason: 'STARTTLS with an argument (RFC 3207 §4)' },
  tlsAlreadyActive: { code: 503, enhanced: '5.5.1', text: 'Error: TLS already active', reason: 'STARTTLS within TLS (RFC 3207 §4.2)' },
  vrfySyntax: { code: 501, enhanced: '5.5.4', text: 'Error: Syntax: VRFY address', reason: 'VRFY without an argument (RFC 5321 §4.1.1.6)' },
  proxyCommandNotAllowed: { code: 550, enhanced: '5.7.0', text: 'Error: Not allowed', reason: 'XCLIENT or XFORWARD: not taken from any client (the PROXY protocol from a trusted balancer gives the client\'s address)' },
  // STARTTLS where it is not offered (tls.mode none), Postfix's words: smtp-server started TLS with its own built-in
  // certificate (CN=localhost, its key published with the package) and the session then passed for encrypted.
  starttlsNotOffered: { code: 502, enhanced: '5.5.1', text: 'Error: command not implemented', reason: 'tls.mode: none (STARTTLS not offered on this listener)' },
  // A DATA refused with the message already sent behind it (closed: its lines are not read as commands).
  chunkingNotOffered: { code: 554, enhanced: '5.5.1', text: 'Error: BDAT without CHUNKING (not offered), the chunk cannot be read', reason: 'BDAT, CHUNKING not offered' },
  pipelinedAfterRefusedData: { code: 554, enhanced: '5.5.0', text: 'Error: SMTP protocol synchronization (message content sent before the reply to DATA)', reason: 'input pipelined after a refused DATA' },

  // AUTH.
  authAlreadyDone: { code: 503, enhanced: '5.5.1', text: 'Already authenticated', reason: 'one AUTH per session (RFC 4954 §4)' },
  authInTransaction: { code: 503, enhanced: '5.5.1', text: 'AUTH not permitted during a mail transaction', reason: 'no AUTH during a mail transaction (RFC 4954 §4)' },
  authNeedsTls: { code: 538, enhanced: '5.7.11', text: 'Encryption required for requested authentication mechanism (issue STARTTLS first)', reason: 'AUTH before STARTTLS on a TLS listener' },
  authSyntax: { code: 501, enhanced: '5.5.4', text: 'Syntax: AUTH mechanism [initial-response]', reason: 'AUTH without a mechanism (RFC 4954 §4)' },
  authMechanismUnknown: { code: 504, enhanced: '5.5.4', text: 'Unrecognized authentication type', reason: 'auth.mechanisms: not offered' },
  authExternalSyntax: { code: 501, enhanced: '5.5.2', text: 'Syntax: AUTH EXTERNAL [initial-response]', reason: 'AUTH EXTERNAL syntax' },
  authAborted: { code: 501, enhanced: '5.7.0', text: 'Authentication aborted', reason: 'the client cancelled AUTH' },
  authBadBase64: { code: 501, enhanced: '5.5.2', text: 'Invalid base64 in SASL response', reason: 'SASL response syntax' },
  authMalformed: { code: 501, enhanced: '5.5.4', text: 'Error: malformed SASL response (a missing username, control characters, or not the three PLAIN fields)', reason: 'AUTH: a malformed SASL response (no username, control characters, or not three PLAIN fields)' },
  authPlainSyntax: { code: 501, enhanced: '5.5.4', text: 'Error: syntax: AUTH PLAIN token', reason: 'AUTH PLAIN with more than one argument (RFC 4954 §4)' },
  authLoginSyntax: { code: 501, enhanced: '5.5.4', text: 'Error: syntax: AUTH LOGIN', reason: 'AUTH LOGIN with more than one argument' },
  authInvalid: { code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid', reason: 'authentication failed' },
  accountAuthDeferred: { code: 454, enhanced: '4.7.0', text: 'Temporary authentication failure, try again later', reason: 'limits.authFailuresPerAccount' },
  authStoreUnavailable: { code: 454, enhanced: '4.7.0', text: 'Temporary authentication failure, try again later', reason: 'limits.authFailuresPerIp: store unavailable (fail closed)' },
  authSucceeded: { code: 235, enhanced: '2.7.0', text: 'Authentication successful' },

  // MAIL FROM and RCPT TO.
  parameterUnsupported: { code: 555, enhanced: '5.5.4', text: 'Unsupported option: {parameter}', reason: 'a MAIL or RCPT parameter of an extension not offered (RFC 5321 §4.1.1.11)' },
  parameterTooLong: { code: 501, enhanced: '5.5.4', text: 'Error: {parameter} parameter exceeds {n} characters', reason: 'a MAIL or RCPT parameter longer than its extension allows (RFC 3461 §4.2, §4.4; RFC 4954 §5)' },
  parameterSyntax: { code: 501, enhanced: '5.5.4', text: 'Bad {parameter} parameter syntax', reason: 'a MAIL or RCPT parameter holding a control character once xtext-decoded (RFC 3461 §4): the parameter refused, not the address' },
  envidSyntax: { code: 501, enhanced: '5.5.4', text: 'Bad ENVID parameter syntax', reason: 'an ENVID that is not printable US-ASCII once xtext-decoded (RFC 3461 §4.4): passed on, a next hop refuses it (Postfix: 501), and the message with it' },
  invisibleInAddress: { code: 553, enhanced: '5.1.3', text: 'Control, format or unassigned characters in an address are not accepted', reason: 'an address holding an invisible, bidi, control, private-use or unassigned character (ceo<U+00AD>@, <U+202E>…): shown as another address' },
  quotedLocalPart: { code: 553, enhanced: '5.1.3', text: 'Quoted local parts with spaces or special characters are not accepted', reason: 'a quoted local part that needs its quotes ("a b"@, "a@b"@): not carried' },
  utf8AddressUndeclared: { code: 553, enhanced: '5.6.7', text: 'Must declare SMTPUTF8 to send unicode address', reason: 'a non-ASCII address in a transaction whose MAIL FROM has no SMTPUTF8 (RFC 6531 §3.4)' },

  // MAIL FROM.
  tlsRequired: { code: 530, enhanced: '5.7.0', text: 'Must issue a STARTTLS command first', reason: 'requireTls' },
  authRequired: { code: 530, enhanced: '5.7.0', text: 'Authentication required', reason: 'auth.required' },
  certificateRevoked: { code: 550, enhanced: '5.7.1', text: 'Client certificate has been revoked', reason: 'client certificate revoked since the session began (CRL reloaded)' },
  certificateCaWithdrawn: { code: 550, enhanced: '5.7.1', text: 'Client certificate is no longer accepted', reason: 'client certificate\'s CA removed from caFiles since the session began (reloaded)' },
  certificatePinRemoved: { code: 550, enhanced: '5.7.1', text: 'Client certificate is no longer accepted', reason: 'the account the client certificate names changed since the session began (its pin removed, or certificateIdentity reloaded)' },
  certificateExpired: { code: 421, enhanced: '4.7.0', text: 'Client certificate has expired, connect again', reason: 'the client certificate this session logged in with expired since the session began: a new handshake judges it as it is now' },
  tooManyMessages: { code: 421, enhanced: '4.7.0', text: 'Error: too many messages in this connection, reconnect', reason: 'limits.maxMessagesPerConnection' },
  loginWithdrawn: { code: 421, enhanced: '4.7.0', text: 'Login no longer valid, log in again', reason: 'password changed or user removed from the users file since the login (reloaded)' },
  spoolWriteFull: { code: 452, enhanced: '4.3.1', text: 'Insufficient system storage', reason: 'the spool\'s disk is full (ENOSPC)' },
  storageFull: { code: 452, enhanced: '4.3.1', text: 'Insufficient system storage', reason: 'spool.minFreeBytes' },
  inodesFull: { code: 452, enhanced: '4.3.1', text: 'Insufficient system storage', reason: 'spool.minFreeInodes' },
  spoolNotConfirming: { code: 451, enhanced: '4.3.0', text: 'Temporary local problem: the spool cannot confirm writes, try again later', reason: 'spool.syncDeadlineMs: a sync of the spool has not returned (a disk or storage path that stopped answering)' },
  spoolReadOnly: { code: 451, enhanced: '4.3.0', text: 'Temporary local problem, try again later', reason: 'the spool\'s filesystem is read-only (EROFS)' },
  tooMuchMailFromIdentity: { code: 450, enhanced: '4.7.1', text: 'Error: too much mail from {identity}, try again later', reason: 'limits.messagesPerIdentity' },
  limitStoreUnavailable: { code: 451, enhanced: '4.3.0', text: 'Temporary local problem, try again later', reason: 'limits.messagesPerIdentity: store unavailable (fail closed)' },
  senderNotOwned: { code: 553, enhanced: '5.7.1', text: '<{sender}>: Sender address rejected: not owned by user {login}', reason: 'senderLogin: {rule}' },
  nullSenderRefused: { code: 553, enhanced: '5.7.1', text: '<>: Sender address rejected: null sender not allowed for user {login}', reason: 'senderLogin: {rule}' },
  senderAccepted: { code: 250, enhanced: '2.1.0', text: 'Accepted' },

  // RCPT TO.
  unknownLocalRecipient: { code: 550, enhanced: '5.1.1', text: '<{rcpt}>: Recipient address rejected: User unknown in local recipient table', reason: 'localRecipients: an address of a local domain that the recipient table does not list' },
  unknownLocalRecipientDeferred: { code: 450, enhanced: '4.1.1', text: '<{rcpt}>: Recipient address rejected: User unknown in local recipient table', reason: 'localRecipients (unknownRecipientReply: defer): an address of a local domain that the recipient table does not list' },
  relayDenied: { code: 554, enhanced: '5.7.1', text: '<{rcpt}>: Relay access denied', reason: 'relay rule: not a local recipient (domain, or routing in the local part), not authenticated, no relay certificate' },
  recipientAccepted: { code: 250, enhanced: '2.1.5', text: 'Accepted' },

  // End of DATA.
  messageTooBig: { code: 552, enhanced: '5.3.4', text: 'Message size exceeds fixed maximum message size', reason: 'limits.maxMessageSize' },
  tooManyHeaderFields: { code: 552, enhanced: '5.3.4', text: 'Message header section exceeds fixed maximum of {n} fields', reason: 'limits.maxHeaderFields' },
  headerTooBig: { code: 552, enhanced: '5.3.4', text: 'Message header section exceeds fixed maximum size of {n} bytes', reason: 'limits.maxHeaderBytes' },
  bareCrInHeader: { code: 554, enhanced: '5.6.0', text: 'Message header section contains a bare CR (a CR not followed by LF)', reason: 'a bare CR in the header section (a line end to the next hop, none to scripts and header edits)' },
  fromHeaderCount: { code: 550, enhanced: '5.6.0', text: 'Message must have exactly one From: header field, not {n}', reason: 'senderLogin.headerFrom: From: fields counted' },
  fromHeaderNoAddress: { code: 550, enhanced: '5.6.0', text: 'Message From: header field names no address', reason: 'senderLogin.headerFrom: From: without an address' },
  fromHeaderNotOwned: { code: 550, enhanced: '5.7.1', text: '<{address}>: From: header address rejected: not owned by user {login}', reason: 'senderLogin.headerFrom: From: not owned by the login' },
  senderHeaderNotOwned: { code: 550, enhanced: '5.7.1', text: '<{address}>: Sender: header address rejected: not owned by user {login}', reason: 'senderLogin.headerFrom: Sender: not owned by the login' },
  tooManyHops: { code: 554, enhanced: '5.4.6', text: 'Error: too many hops', reason: 'a mail loop: {hops} Received header fields, and ours would pass the 50 delivery takes (the queue would bounce it)' },
  nulInHeader: { code: 554, enhanced: '5.6.0', text: 'Message header section contains a NUL character', reason: 'a NUL in a header field (next hops end the field there, scripts see all of it)' },
  dataTooSlowForAnotherClient: { code: 421, enhanced: '4.4.2', text: '{hostname} Message arriving too slowly while the server is full, closing connection', reason: 'limits.minDataRate: {rate} bytes/s over the last {seconds} s, below {min}, while the listener was full: closed for another client' },
  dataTimeout: { code: 421, enhanced: '4.4.2', text: 'Timeout - closing connection', reason: 'limits.dataTimeoutMs' },
  queued: { code: 250, enhanced: '2.0.0', text: 'Ok: queued as {id}' },

  // Script verdicts without their own code or text (the verdict table, verdict-replies.ts).
  connectRefused: { code: 554, enhanced: '5.7.1', text: 'Connection refused by policy', reason: 'script {hook}: reject' },
  heloRefused: { code: 550, enhanced: '5.7.1', text: 'HELO refused by policy', reason: 'script {hook}: reject' },
  authRefused: { code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid', reason: 'script {hook}: reject' },
  senderRefused: { code: 550, enhanced: '5.7.1', text: 'Sender refused by policy', reason: 'script {hook}: reject' },
  recipientRefused: { code: 550, enhanced: '5.7.1', text: 'Recipient refused by policy', reason: 'script {hook}: reject' },
  messageRefused: { code: 550, enhanced: '5.7.1', text: 'Message refused by policy', reason: 'script {hook}: reject' },
  deliveryRefused: { code: 550, enhanced: '5.7.1', text: 'Delivery refused by policy', reason: 'script {hook}: reject' },
  policyDeferred: { code: 451, enhanced: '4.3.0', text: 'Temporary policy failure, try again later', reason: 'script {hook}: defer' },
  authDeferred: { code: 454, enhanced: '4.7.0', text: 'Temporary policy failure, try again later', reason: 'script {hook}: defer' },
  deferredDisconnect: { code: 421, enhanced: '4.7.0', text: 'Temporary policy failure, try again later', reason: 'script {hook}: defer' },
  deliveryDeferred: { code: 451, enhanced: '4.3.0', text: 'Delivery deferred by policy', reason: 'script {hook}: defer' },

  // Failures: never an accept, never a bounce (fail closed).
  policyFailed: { code: 451, enhanced: '4.3.0', text: 'Temporary policy failure, try again later', reason: 'script {hook} failed (fail closed)' },
  /** AUTH's: RFC 4954's temporary failure (454 4.7.0), as the auth script's own defer and a store outage at AUTH get. */
  authPolicyFailed: { code: 454, enhanced: '4.7.0', text: 'Temporary policy failure, try again later', reason: 'script {hook} failed (fail closed)' },
  localError: { code: 451, enhanced: '4.3.0', text: 'Temporary local problem, try again later ({id})', reason: 'local error' },
} as const satisfies Record<string, ReplySpec>;

export type ReplyName = keyof typeof REPLIES;

/** The `{name}` placeholders of a template. */
type Placeholders<T extends string> = T extends `${string}{${infer P}}${infer Rest}` ? P | Placeholders<Rest> : never;
type Spec<N extends ReplyName> = (typeof REPLIES)[N];
type ValuesOf<N extends ReplyName> = Placeholders<Spec<N>['text']> | Placeholders<Spec<N> extends { reason: infer R extends string } ? R : ''>;

/** What a verdict may change of a catalogue reply. */
export interface ReplyOverride { code?: number; enhanced?: string; text?: string; disconnect?: boolean }

/** The reply `name`, with its placeholders filled in and, for a verdict, its own code, enhanced code or text. */
export function reply<N extends ReplyName>(
  name: N, ...[values, override]: [ValuesOf<N>] extends [never] ? [values?: Record<string, never>, override?: ReplyOverride] : [values: Record<ValuesOf<N>, string>, override?: ReplyOverride]
): SmtpReply {
  if (values === undefined && override === undefined) return fixedReply(name);
  const spec: ReplySpec = REPLIES[name];
  const filled = values as Record<string, string> | undefined;
  return new SmtpReply(override?.code ?? spec.code, override?.enhanced ?? spec.enhanced, override?.text ?? fill(spec.text, filled), {
    disconnect: override?.disconnect, reason: spec.reason === undefined ? undefined : fill(spec.reason, filled),
  });
}

/**
 * The replies that take no values, each built once, at its first use: every reply of the kind shares it.
 * Not frozen: a logger's error serializer (pino) tags the object it prints for a moment.
 */
const fixedReplies = new Map<ReplyName, SmtpReply>();
function fixedReply(name: ReplyName): SmtpReply {
  let built = fixedReplies.get(name);
  if (built === undefined) {
    const spec: ReplySpec = REPLIES[name];
    built = new SmtpReply(spec.code, spec.enhanced, fill(spec.text, undefined), { reason: spec.reason === undefined ? undefined : fill(spec.reason, undefined) });
    fixedReplies.set(name, built);
  }
  return built;
}

/** A template with each `{name}` replaced by its value ('' when none). */
function fill(template: string, values: Record<string, string> | undefined): string {
  // A scan, not a replace() with a callback: the 250 of every message is filled here (perf: ~1 µs less).
  let open = template.indexOf('{');
  if (open < 0) return template;
  let out = '';
  let from = 0;
  while (open >= 0) {
    const close = template.indexOf('}', open + 1);
    if (close < 0) break;
    const key = template.slice(open + 1, close);
    if (WORD.test(key)) {
      out += template.slice(from, open) + (values?.[key] ?? '');
      from = close + 1;
      open = template.indexOf('{', from);
    } else {
      open = template.indexOf('{', open + 1);
    }
  }
  return out + template.slice(from);
}
const WORD = /^\w+$/;

/** How docs/scripts.md shows an entry: `<code> <enhanced> <text>`, each `{name}` as `<name>`. */
export function documentedForm(spec: ReplySpec): string {
  return `${spec.code} ${spec.enhanced} ${spec.text.replace(/<\{(\w+)\}>/g, '<$1>').replace(/\{(\w+)\}/g, '<$1>')}`;
}

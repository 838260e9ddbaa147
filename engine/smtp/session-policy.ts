/**
 * The decisions of a session, hook by hook: built-in rules first, then the listener's script, whose
 * verdict wins. Each method returns the reply it decided — a refusal, or an accept whose text a script
 * chose — or null for smtp-server's own reply; nothing here writes to sockets (PosternConnection.send() does).
 */
import { metrics } from '../metrics/metrics.ts';
import type { TLSSocket } from 'node:tls';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerSession } from 'smtp-server';
import type { SmtpClient } from './smtp-client.ts';
import { spoolCannotConfirm, spoolIsFull, type Runtime } from './runtime.ts';
import type { SmtpReply } from './reply.ts';
import { reply } from './replies.ts';
import { verdictReply } from './verdict-replies.ts';
import { relayRefusal } from './relay-reply.ts';
import { flushAfterScriptCalls } from './reply-batch.ts';
import { connectionInfo, envelopeAddress, sharedConnectionFacts, transactionInfo } from './script-context.ts';
import { declaresUtf8 } from './envelope-path.ts';
import { FAIL_CLOSED, runHook } from '../policy/run-hook.ts';
import { wasBarePostmaster } from '../policy/postmaster.ts';
import { builtinAuth, builtinRelay, builtinSender, requestedAccount, scriptLoginName, type AuthAttempt, type SenderFacts } from '../policy/builtin-rules.ts';
import { extraSenders, parseSenderList } from '../policy/sender-logins.ts';
import { headerSenderRefusal } from '../policy/header-senders.ts';
import { certificateIdentity, type CertificateIdentity } from '../policy/certificate-identity.ts';
import type { LookupTable } from '../policy/lookup-tables.ts';
import { boundedName, chainEmailConstraints, describePeerCertificate, explainUnspecified } from '../certificates/index.ts';
import { clientText } from '../logging/logger.ts';
import { AuthFailureLimiter } from '../auth/failure-limiter.ts';
import { STORE_KEYS, type CounterStore } from '../store/counter-store.ts';
import { accountLockedWarning, accountLoggedIn, claimAccountGuess, guessedAccount, type AccountFailureLimit, type AccountGuess } from '../auth/account-failures.ts';
import { userKey } from '../auth/users-file.ts';
import type { BuiltinRelayDecision, BuiltinSenderDecision, EnvelopeAddress, HeaderEdit, HookName, PeerCertificate, Verdict } from '../sandbox/api/index.ts';
import { closeMessageText, openMessageText, type BodyReader } from '../sandbox/index.ts';
import { countedAddress } from '../connection-limits/counted-address.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import type { ListenerConfig } from '../config/schema.ts';

/** No senders besides the identity's own (no array per MAIL FROM where the binding is off). */
const NO_SENDERS: readonly string[] = Object.freeze([]);

/** A command's decision: known at once, or once a script (or the store) has answered. */
export type Decision = SmtpReply | null | Promise<SmtpReply | null>;

/** What the data hook decided: its reply (null: the default 250), an accept's header edits and hold. */
export interface DataDecision {
  reply: SmtpReply | null;
  headerEdits: readonly HeaderEdit[] | null;
  /** `accept({ hold })`: the message goes on hold in the queue (the script's file and reason). */
  hold: { file: string; reason: string } | null;
}
const NO_DATA_DECISION: DataDecision = Object.freeze({ reply: null, headerEdits: null, hold: null });

/**
 * The parameters of the extensions the EHLO reply offers (SIZE, 8BITMIME, SMTPUTF8, DSN, AUTH): any other is
 * refused, as Postfix does, rather than ignored; REQUIRETLS above all, which smtp-server would take without
 * offering it, and which delivery would not honour.
 */
const MAIL_PARAMETERS: ReadonlySet<string> = new Set(['SIZE', 'BODY', 'SMTPUTF8', 'RET', 'ENVID', 'AUTH']);
/**
 * A listener without SASL mechanisms never offers AUTH, so its AUTH= is a parameter of an extension not offered
 * (Postfix refuses it with SASL off): taken, a client that can never log in there named an authenticated sender,
 * which scripts saw as the transaction's AUTH parameter.
 */
const MAIL_PARAMETERS_WITHOUT_AUTH: ReadonlySet<string> = new Set([...MAIL_PARAMETERS].filter((p) => p !== 'AUTH'));
const RCPT_PARAMETERS: ReadonlySet<string> = new Set(['NOTIFY', 'ORCPT']);

/**
 * The longest value of the parameters whose values Postern keeps: ENVID 100 characters (RFC 3461 §4.4), ORCPT 500
 * (§4.2), AUTH 500 (RFC 4954 §5), NOTIFY each keyword once (`SUCCESS,FAILURE,DELAY`). smtp-server keeps every
 * recipient's parameters for the whole session (ORCPT whole, NOTIFY split into a list, which is spooled too), and
 * checks no length: within its 16 KB command line, 100 recipients of `NOTIFY=SUCCESS,SUCCESS,…` held ~8 MB per
 * session, so a few hundred sessions took gigabytes.
 */
const PARAMETER_MAX_LENGTH: ReadonlyMap<string, number> = new Map([['ENVID', 100], ['ORCPT', 500], ['AUTH', 500], ['NOTIFY', 'SUCCESS,FAILURE,DELAY'.length]]);

/** The refusal of the first parameter not in `known`, or longer than it may be; null when there is none. */
function unsupportedParameter(address: SMTPServerAddress, known: ReadonlySet<string>): SmtpReply | null {
  const args = address.args as Record<string, string | true> | false | undefined;
  if (!args) return null;
  // for…in, not Object.keys(): no array per MAIL and RCPT (smtp-server's args is a plain object literal).
  for (const name in args) {
    if (!known.has(name)) return reply('parameterUnsupported', { parameter: name.slice(0, 64) });
    const value = args[name]!;
    const max = PARAMETER_MAX_LENGTH.get(name);
    if (max !== undefined && value !== true && value.length > max) return reply('parameterTooLong', { parameter: name, n: String(max) });
    // RFC 3461 §4.4: printable US-ASCII. Another (xtext +E9, raw UTF-8) was taken and passed on, and a next hop that
    // offers DSN refused MAIL FROM for it (Postfix: 501 Bad ENVID parameter syntax): the accepted message bounced.
    if (name === 'ENVID' && value !== true && !/^[\x20-\x7e]*$/.test(value)) return reply('envidSyntax');
  }
  return null;
}

/**
 * A non-ASCII address in a transaction whose MAIL FROM did not declare SMTPUTF8 (RFC 6531 §3.4): taken, it
 * would be relayed as an undeclared UTF-8 envelope, to a next hop that may not speak SMTPUTF8 at all.
 */
function undeclaredUtf8(address: SMTPServerAddress, mail: SMTPServerAddress | false | undefined): boolean {
  // eslint-disable-next-line no-control-regex
  if (!/[^\x00-\x7f]/.test(address.address)) return false;
  return !(mail && declaresUtf8(mail));
}

/** How an AUTH was decided: the user to log in as, or the reply and the reason logged beside it. */
type AuthDecision = { user: string } | { reply: SmtpReply; reason: string; guessFailed?: boolean };

/** A failed guess, counted at the address and at the account: a 5xx refusal, or a script's failure on wrong credentials. */
const failedGuess = (decision: AuthDecision): boolean =>
  !('user' in decision) && (decision.reply.responseCode >= 500 || decision.guessFailed === true);

export class SessionPolicy {
  readonly #runtime: Runtime;

  constructor(runtime: Runtime) {
    this.#runtime = runtime;
  }

  get #log() { return this.#runtime.logger; }

  /**
   * `hook`'s script call. The per-message hooks pass the key of their shared connection facts
   * (sharedConnectionFacts()): they repeat with the same facts, which connect, helo and auth see change.
   * Not async: the caller awaits runHook's own promise (no extra promise and hop per call).
   */
  #run(conn: SmtpClient, hook: HookName, ctx: object, connectionKey?: string): Promise<Verdict | undefined> {
    const st = conn.state;
    const verdict = runHook(st.generation, st.listener, hook, ctx, conn.id, this.#log, connectionKey) as Promise<Verdict | undefined>;
    flushAfterScriptCalls(); // after the call's batch was queued: its reply leaves in the same turn
    return verdict;
  }

  internalError(conn: SmtpClient, err: unknown): SmtpReply {
    this.#log.error({ cid: conn.id, err }, 'internal error');
    return reply('localError', { id: conn.id });
  }

  /** A connection is ready for its greeting (after the handshake on implicit TLS). */
  async connect(conn: SmtpClient): Promise<SmtpReply | null> {
    const st = conn.state;
    const limits = st.listener.limits;
    const counted = countedAddress(conn.remoteAddress, limits.ipv6PrefixLength); // an IPv6 client by its network
    const slotRefusal = await this.#takeStoreSlot(conn, counted, limits);
    if (slotRefusal) return slotRefusal;
    const rateRefusal = await this.#connectionRate(conn, counted);
    if (rateRefusal) return rateRefusal;
    // Only where AUTH is offered: the failures are counted over every listener, and an MX without AUTH (or a
    // listener logging in by certificate only) has no password to guess; refused there, one address's failed
    // logins on submission or the account page refused the mail of every server behind that address.
    if (st.listener.auth.mechanisms.length && await this.#refusedAtConnect(conn, counted, limits)) return reply('tooManyAuthFailures');
    if (conn.secure) {
      st.tlsMode = 'implicit';
      const refusal = this.#tlsEstablished(conn, conn._socket as TLSSocket);
      if (refusal) return refusal;
    }
    const verdict = await this.#run(conn, 'connect', { connection: connectionInfo(conn.session, st) });
    return verdict ? verdictReply('connect', verdict) : null;
  }

  /**
   * limits.connectionsPerIpInStore: the connection's slot in a store shared between servers (Redis), held
   * until the session closes. This server's own count (postern-server.ts) was checked at accept already.
   * A store that cannot answer refuses the connection: the limit would not hold (fail closed).
   */
  async #takeStoreSlot(conn: SmtpClient, ip: string, limits: SmtpClient['state']['listener']['limits']): Promise<SmtpReply | null> {
    const st = conn.state;
    const slots = st.generation.store?.connectionSlots;
    if (!limits.connectionsPerIpInStore || !slots) return null;
    let release: (() => void) | null;
    try {
      release = await slots.acquire(STORE_KEYS.connections(st.listener.name, ip), limits.maxConnectionsPerIp);
    } catch (err) {
      this.#log.debug({ cid: conn.id, ip, err: { message: (err as Error).message } }, 'connection refused: connection slots unavailable (store)');
      return reply('connectionLimitStoreUnavailable');
    }
    if (!release) return reply('tooManyConnectionsFromAddress');
    st.releaseSlot = release;
    if (st.closed) release(); // the client left while the slot was being taken
    return null;
  }

  /**
   * limits.connectionRatePerIp: this connection counted for its client (its network, for IPv6) in the store;
   * over the limit, 421 (Postfix anvil's smtpd_client_connection_rate_limit). A store that cannot answer
   * refuses too: the limit would not hold (fail closed). On an implicit-TLS listener it was counted before the
   * handshake already (PosternServer). Not a trusted balancer's own connections (its health checks): counted
   * under its address they used up its rate, their 421 took the node out of service, as Postfix exempts
   * mynetworks from anvil's rate by default.
   */
  async #connectionRate(conn: SmtpClient, ip: string): Promise<SmtpReply | null> {
    const st = conn.state;
    if (st.connectionRateDecided !== undefined) return st.connectionRateDecided;
    if (st.fromBalancer) return null;
    return (await this.countConnection(st.generation, st.listener, ip, conn.remoteAddress, conn.id))?.refusal ?? null;
  }

  /**
   * Count one connection of `ip` (the counted address of `client`) against the listener's connectionRatePerIp:
   * null when allowed (or there is no limit), else its refusal, and whether the client is over the rate (not
   * merely uncounted: the store could not answer).
   */
  async countConnection(generation: PolicyGeneration, listener: ListenerConfig, ip: string, client: string, cid?: string): Promise<{ refusal: SmtpReply; overRate: boolean } | null> {
    const limit = listener.limits.connectionRatePerIp;
    const store = generation.store;
    if (!limit || !store) return null;
    let result;
    try {
      result = await store.rate(STORE_KEYS.connectionRate(listener.name, ip), limit.count, limit.windowSeconds);
    } catch (err) {
      this.#log.debug({ cid, ip, err: { message: (err as Error).message } }, 'connection refused: connection rate unavailable (store)');
      return { refusal: reply('connectionRateStoreUnavailable'), overRate: false };
    }
    if (result.allowed) return null;
    return { refusal: reply('connectionRateFromAddress', { ip: client }), overRate: true };
  }

  /**
   * The early refusal of an address over its auth-failure limit. When the store cannot answer (Redis down)
   * the connection goes on: it is a courtesy, the limit itself is enforced at every AUTH (authAllowed), which
   * then fails closed. So a store outage refuses only what needs the store (AUTH, messagesPerIdentity,
   * scripts' rate()/counter()), never every connection of a listener that uses none of it.
   */
  async #refusedAtConnect(conn: SmtpClient, ip: string, limits: SmtpClient['state']['listener']['limits']): Promise<boolean> {
    try {
      return await this.#runtime.authFailures.refused(ip, limits);
    } catch (err) {
      this.#log.debug({ cid: conn.id, ip, err: { message: (err as Error).message } }, 'auth-failure count unavailable at connect: not checked here (AUTH fails closed)');
      return false;
    }
  }

  /** STARTTLS completed. */
  starttls(conn: SmtpClient, socket: TLSSocket): SmtpReply | null {
    const st = conn.state;
    if (st.tlsMode === 'implicit') return null; // handled at connect
    st.resetForStartTls();
    st.tlsMode = 'starttls';
    return this.#tlsEstablished(conn, socket);
  }

  /** Describe the client certificate, derive its identity, enforce `require`. */
  #tlsEstablished(conn: SmtpClient, socket: TLSSocket): SmtpReply | null {
    const st = conn.state;
    const tls = st.listener.tls;
    st.certificateRequested = tls.clientCertificates !== 'none';
    // Only the DER is needed: getPeerCertificate() would also build every field and three fingerprints.
    const der = st.certificateRequested ? socket.getPeerX509Certificate()?.raw : undefined;
    if (der) {
      // Without caFiles Node would verify against the public roots: that must never grant anything.
      // A reload during the handshake: OpenSSL verified with the CA list of its start, which may hold a CA taken out since.
      const withdrawn = socket.authorized && st.handshakeTrust !== null && st.handshakeTrust !== conn.trust && !conn.trust.holdRootOf(socket);
      const verified = tls.caFiles.length > 0 && socket.authorized && !withdrawn;
      let errorCode = verified ? null
        : tls.caFiles.length === 0 ? 'NO_CA_CONFIGURED' : withdrawn ? 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY' : String(socket.authorizationError ?? 'UNKNOWN');
      // OpenSSL checks the CRL before it gives up on the issuer: a foreign or self-signed certificate
      // shows up as "no CRL". Report the more fundamental reason.
      if (errorCode === 'UNABLE_TO_GET_CRL') errorCode = conn.trust.explainMissingCrl(der);
      errorCode = explainUnspecified(errorCode, der);
      const described = describePeerCertificate(der, { verified, errorCode });
      if ('unreadable' in described) {
        const refusal = this.#unreadableCertificate(conn, socket, described.unreadable);
        if (refusal) return refusal;
        st.certificate = null;
      } else {
        st.certificate = described;
      }
    } else {
      st.certificate = null;
    }
    const pinTable = st.listener.certificateIdentity.pins ? st.generation.tables.get(st.listener.certificateIdentity.pins) : undefined;
    st.identity = this.#identityOf(conn, socket, pinTable);
    st.identityRules = st.listener.certificateIdentity;
    st.certificateTrust = conn.trust;
    st.notRevokedBy = null; // asked at the first command (certificateIdentity asks only of a certificate naming an account)
    const cert = st.certificate;
    if (cert) this.#recordSighting(conn, cert);
    if (cert && pinTable && !st.identity.pinned && pinTable.get(cert.fingerprint.sha256) !== null) {
      // A Postfix relay_clientcerts line copied as it was (openssl x509 -fingerprint -sha256): the certificate's
      // digest has a pin's length, so only a certificate that shows it tells the two apart. It names no account.
      this.#log.warn({ cid: conn.id, table: pinTable.name, fingerprint: cert.fingerprint.sha256Colon, pin: cert.pin.sha256Base64Url },
        `pin table ${pinTable.name} lists this client certificate's SHA-256 fingerprint, not its public key's: it names no account; `
        + `a pin is the SHA-256 of the public key (${cert.pin.sha256Base64Url}, postern pins add), which also outlives a renewal with the same key`);
    }
    const protocol = socket.getProtocol();
    metrics.tlsHandshakes.inc({ listener: st.listener.name, protocol: protocol ?? 'unknown', client_certificate: certificateOutcome(cert, st.identity.pinned) });
    if (this.#log.isLevelEnabled('info')) { // the fields are built only for a line that is written
      this.#log.info({
        // The pin (mox's base64url) lets `postern pins learn <cid>` find this certificate in the log.
        cid: conn.id, tls: protocol, cert: cert ? { subject: boundedName(cert.subject.dn), verified: cert.verified, error: cert.verifyError, pin: cert.pin.sha256Base64Url } : null,
        identity: st.identity.identity,
      }, 'TLS established');
    }
    if (tls.strict && cert && !cert.verified && !st.identity.pinned) {
      // Strict: no SMTP session at all for an untrusted certificate (mox's handshake-level refusal).
      conn.state.closedUnanswered = true;
      socket.destroy();
      return reply('certificateNotTrustedStrict');
    }
    if (tls.clientCertificates === 'require' && !(cert && (cert.verified || st.identity.pinned))) {
      // Postfix smtpd_tls_req_ccert: never a usable session.
      return cert ? reply('certificateRequiredNotTrusted', { verifyError: cert.verifyError ?? 'invalid' }) : reply('certificateRequiredMissing');
    }
    if (st.listener.certificateIdentity.autoLogin && st.identity.identity) {
      st.user = st.identity.identity;
      st.mechanism = 'CERTIFICATE';
      conn.session.user = st.identity.identity;
    }
    return null;
  }

  /** The account the session's certificate names now, under `pinTable` and the listener's current CRLs. */
  #identityOf(conn: SmtpClient, socket: TLSSocket, pinTable: LookupTable | undefined): CertificateIdentity {
    return certificateIdentity(conn.state.listener, conn.state.certificate, pinTable, conn.trust, {
      emailConstraints: () => chainEmailConstraints(socket), issuerRevoked: () => conn.trust.revokesIssuerOf(socket),
    });
  }

  /**
   * A certificate OpenSSL took but whose fields cannot be read: it grants nothing, so the session goes on as
   * without one, except where a trusted certificate is required (strict: closed; require: 421).
   */
  #unreadableCertificate(conn: SmtpClient, socket: TLSSocket, reason: string): SmtpReply | null {
    const tls = conn.state.listener.tls;
    this.#log.info({ cid: conn.id, reason }, 'client certificate unreadable: treated as none');
    if (tls.strict) {
      conn.state.closedUnanswered = true;
      socket.destroy();
      return reply('certificateNotTrustedStrict');
    }
    return tls.clientCertificates === 'require' ? reply('certificateRequiredNotTrusted', { verifyError: 'unreadable' }) : null;
  }

  async helo(conn: SmtpClient, name: string, verb: 'HELO' | 'EHLO'): Promise<SmtpReply | null> {
    const st = conn.state;
    if (!st.generation.hasScript(st.listener, 'helo')) return null;
    const connection = { ...connectionInfo(conn.session, st), helo: name }; // the name this EHLO gives
    const verdict = await this.#run(conn, 'helo', { connection, helo: { name, command: verb } });
    return verdict ? verdictReply('helo', verdict) : null;
  }

  /** AUTH with smtp-server's SASL (PLAIN, LOGIN): adapt to authenticate(). */
  async onAuth(conn: SmtpClient, auth: SMTPServerAuthentication): Promise<string | SmtpReply> {
    const username = auth.username ?? '';
    // smtp-server falls back to the authzid when the authcid is empty; then there was no separate authzid.
    const authzid = auth.authcid ? auth.authzid ?? '' : '';
    return this.authenticate(conn, { mechanism: auth.method, username, password: auth.password ?? '', authzid });
  }

  /**
   * An AUTH may go ahead: the client's address is below its failure limit (counted over all its
   * connections). Else the 421 that ends this connection, whatever the credentials.
   */
  async authAllowed(conn: SmtpClient): Promise<SmtpReply | null> {
    let refused: boolean;
    try {
      const limits = conn.state.listener.limits;
      refused = await this.#runtime.authFailures.refused(countedAddress(conn.remoteAddress, limits.ipv6PrefixLength), limits);
    } catch (err) {
      return this.#failuresUncounted(conn, err).reply;
    }
    return refused ? this.#tooManyFailures(conn).reply : null;
  }

  /** Guesses that cannot be counted are not allowed (fail closed): RFC 4954's temporary failure. */
  #failuresUncounted(conn: SmtpClient, err: unknown): { reply: SmtpReply; reason: string; ipFailures: null } {
    // Debug: the outage is logged once at error by the store, each refusal once by its decision line.
    this.#log.debug({ cid: conn.id, ip: conn.remoteAddress, err: { message: (err as Error).message } }, 'AUTH refused: auth-failure count unavailable (store)');
    return { reply: reply('authStoreUnavailable'), reason: 'too-many-failures', ipFailures: null };
  }

  #tooManyFailures(conn: SmtpClient): { reply: SmtpReply; reason: string; ipFailures: null } {
    this.#log.info({ cid: conn.id, ip: conn.remoteAddress }, 'AUTH refused: too many authentication failures from this address');
    return { reply: reply('tooManyAuthFailures'), reason: 'too-many-failures', ipFailures: null };
  }

  /** Decide an AUTH attempt; returns the username to log in as, or the failure reply. */
  async authenticate(conn: SmtpClient, attempt: AuthAttempt): Promise<string | SmtpReply> {
    const st = conn.state;
    const ip = conn.remoteAddress;
    const counted = countedAddress(ip, st.listener.limits.ipv6PrefixLength); // the failures' key
    const limiter = this.#runtime.authFailures;
    // Checked again here: other connections of this address may have failed while this one's SASL exchange ran.
    // A failure that cannot be recorded (store gone since the check) still fails; the next AUTH is refused.
    const account = guessedAccount(attempt.mechanism, attempt.username);
    const result = await limiter.guess(counted, st.listener.limits, () => this.#decideUnlessAccountLocked(conn, attempt, account, counted), failedGuess)
      .then((outcome) => outcome.kind === 'refused' ? this.#tooManyFailures(conn)
        : outcome.kind === 'uncounted' ? this.#failuresUncounted(conn, outcome.error)
          : { ...outcome.result, ipFailures: outcome.failures });
    metrics.authAttempts.inc({ listener: st.listener.name, mechanism: attempt.mechanism, result: 'user' in result ? 'success' : 'failure' });
    if ('user' in result) {
      await this.#accountCount(conn, (store, limit) => accountLoggedIn(store, limit, account ?? userKey(result.user), counted));
      st.user = result.user;
      st.mechanism = attempt.mechanism;
      st.saslAuthenticated = true;
      this.#log.info({ cid: conn.id, user: result.user, mechanism: attempt.mechanism }, 'authenticated');
      return result.user;
    }
    const { reply, reason, ipFailures } = result;
    if (ipFailures !== null) {
      st.authFailures++;
      // The reason is for the administrator only: the client gets the same reply whatever it was.
      this.#log.info({ cid: conn.id, ip, mechanism: attempt.mechanism, username: clientText(attempt.username), reason, failures: st.authFailures, ipFailures },
        'authentication failed');
      // The slow-down runs outside oneAtATime: it holds back this connection, not the address's others.
      const delay = AuthFailureLimiter.delayMs(st.authFailures, st.listener.limits);
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    }
    return reply;
  }

  /** limits.authFailuresPerAccount of this listener, with the window of its per-address count. */
  #accountLimit(conn: SmtpClient): AccountFailureLimit {
    const limits = conn.state.listener.limits;
    return { count: limits.authFailuresPerAccount, windowMs: limits.authFailureWindowMs };
  }

  /**
   * A password guess at an account over limits.authFailuresPerAccount is not decided (454, right password or not),
   * unless this address logged in as it recently (account-failures.ts). Not a failed guess: nothing is counted.
   * A decided guess took its place in the account's count before its password was checked (guesses sent at once
   * are held to the limit too); a failed one keeps it, the others give it back.
   */
  async #decideUnlessAccountLocked(conn: SmtpClient, attempt: AuthAttempt, account: string | null, counted: string): Promise<AuthDecision> {
    const store = conn.state.generation.store;
    if (!account || !store) return this.#decideAuth(conn, attempt);
    const limit = this.#accountLimit(conn);
    let guess: AccountGuess;
    try {
      guess = await claimAccountGuess(store, limit, account, counted);
    } catch (err) {
      this.#log.debug({ cid: conn.id, err: { message: (err as Error).message } }, 'AUTH refused: account failure count unavailable (store)');
      return { reply: reply('authStoreUnavailable'), reason: 'account failure count unavailable (store)' };
    }
    if (guess.deferred) {
      this.#log.info({ cid: conn.id, ip: conn.remoteAddress, mechanism: attempt.mechanism, username: clientText(attempt.username) },
        'AUTH deferred: too many failed guesses at this account (limits.authFailuresPerAccount), from an address that has not logged in as it');
      return { reply: reply('accountAuthDeferred'), reason: 'account-locked' };
    }
    let decision: AuthDecision;
    try {
      decision = await this.#decideAuth(conn, attempt);
    } catch (err) {
      await guess.settle(false).catch(() => undefined); // nothing was decided
      throw err;
    }
    await this.#accountCount(conn, async () => {
      if ((await guess.settle(failedGuess(decision))).reachedLimit) accountLockedWarning(this.#log, account, limit, { cid: conn.id, ip: conn.remoteAddress });
    });
    return decision;
  }

  /** Count a login or a failed guess for limits.authFailuresPerAccount; a store that cannot answer changes no verdict. */
  async #accountCount(conn: SmtpClient, count: (store: CounterStore, limit: AccountFailureLimit) => Promise<unknown>): Promise<void> {
    const store = conn.state.generation.store;
    if (!store) return;
    await count(store, this.#accountLimit(conn)).catch((err: unknown) =>
      this.#log.debug({ cid: conn.id, err: { message: (err as Error).message } }, 'authFailuresPerAccount: not counted (store)'));
  }

  /**
   * Every refusal of the built-in rule gets the same reply: a different text for "right password, but not
   * for this identity" would tell a guesser the password was right. Only a script's own text differs.
   */
  async #decideAuth(conn: SmtpClient, attempt: AuthAttempt): Promise<AuthDecision> {
    const st = conn.state;
    // The reason is logged by authenticate(), beside the attempt; the reply is the same whatever it is.
    const invalid = (reason: string) => ({ reply: reply('authInvalid'), reason });
    // Never authenticates, whatever a script says.
    if (attempt.mechanism !== 'EXTERNAL' && !attempt.password) return invalid('empty-password');
    if (attempt.mechanism === 'EXTERNAL' && !st.certificate) return invalid('no-certificate');
    // The handshake's identity, unless a CRL, the CA list or the pin table reloaded since takes it back.
    if (attempt.mechanism === 'EXTERNAL' && this.#certificateWithdrawn(conn, 'AUTH')) return invalid('certificate-withdrawn');
    const builtin = await builtinAuth(attempt, { certificateIdentity: st.identity.identity, users: st.generation.users });
    const verdict = await this.#run(conn, 'auth', { connection: connectionInfo(conn.session, st), auth: { ...attempt }, builtin });
    if (!verdict) {
      if (!builtin.accepted || !builtin.username) return invalid(builtin.reason);
      // A password login is kept with the entry it matched (see ConnectionState.passwordEntry).
      if (builtin.reason === 'password') st.passwordEntry = st.generation.users.get(builtin.username) ?? null;
      return { user: builtin.username };
    }
    // A script that failed (threw, timed out) decided nothing: its 454 is a failed guess unless the credentials were
    // right, else a script failing only for wrong passwords answered every guess 454 and the right one 235, uncounted.
    if (verdict === FAIL_CLOSED) return { reply: verdictReply('auth', verdict)!, reason: `script failed (built-in: ${builtin.reason})`, guessFailed: !builtin.accepted };
    if (verdict.verdict !== 'accept') return { reply: verdictReply('auth', verdict)!, reason: `script ${verdict.verdict} (built-in: ${builtin.reason})` };
    if (verdict.username !== undefined) return { user: scriptLoginName(verdict.username) };
    const username = builtin.username ?? requestedAccount(attempt, st.identity.identity);
    return username ? { user: username } : invalid('script accept without a username, and none the client proved');
  }

  /**
   * MAIL FROM. A decision known at once (a refusal by a rule, or no script to ask and no limit to count in
   * the store) is returned as it is, without a promise: only a script call or the store is waited for.
   */
  mailFrom(conn: SmtpClient, address: SMTPServerAddress, session: SMTPServerSession): Decision {
    const st = conn.state;
    const unsupported = unsupportedParameter(address, st.listener.auth.mechanisms.length ? MAIL_PARAMETERS : MAIL_PARAMETERS_WITHOUT_AUTH);
    if (unsupported) return unsupported;
    if (undeclaredUtf8(address, address)) return reply('utf8AddressUndeclared');
    if (st.listener.requireTls && !conn.secure) return reply('tlsRequired');
    // smtp-server only enforces AUTH when the AUTH command exists; certificate-only listeners need this.
    if (st.listener.auth.required && !st.user) return reply('authRequired');
    const full = spoolIsFull(this.#runtime) ?? spoolCannotConfirm(this.#runtime, conn.id);
    if (full) return reply(full);
    if (!this.adoptCurrentGeneration(conn)) return reply('listenerRemoved');
    const maxMessages = st.listener.limits.maxMessagesPerConnection;
    if (maxMessages > 0 && st.messagesAccepted >= maxMessages) return reply('tooManyMessages');
    const withdrawn = this.#certificateWithdrawn(conn, 'MAIL FROM') ?? this.#loginWithdrawn(conn);
    if (withdrawn) return withdrawn;
    if (st.listener.limits.messagesPerIdentity) return this.#countedMailFrom(conn, address, session);
    return this.#senderDecision(conn, address, session);
  }

  /** MAIL FROM under limits.messagesPerIdentity: counted in the store first. */
  async #countedMailFrom(conn: SmtpClient, address: SMTPServerAddress, session: SMTPServerSession): Promise<SmtpReply | null> {
    return await this.#messagesPerIdentity(conn) ?? await this.#senderDecision(conn, address, session);
  }

  /** The new transaction's sender: the built-in binding, then the mailfrom script's verdict, if any, wins. */
  #senderDecision(conn: SmtpClient, address: SMTPServerAddress, session: SMTPServerSession): Decision {
    const st = conn.state;
    st.transactionId = this.#runtime.spool.newId();
    const sender = envelopeAddress(address);
    const builtin = builtinSender(sender?.address ?? '', this.#senderFacts(conn));
    if (!st.generation.hasScript(st.listener, 'mailfrom')) return builtinSenderReply(st, sender, builtin);
    return this.#senderScript(conn, session, sender, builtin);
  }

  async #senderScript(conn: SmtpClient, session: SMTPServerSession, sender: EnvelopeAddress | null, builtin: BuiltinSenderDecision): Promise<SmtpReply | null> {
    const st = conn.state;
    // As at RCPT TO: the script sees the built-in decision and its verdict, if any, wins.
    const facts = sharedConnectionFacts(session, st);
    const verdict = await this.#run(conn, 'mailfrom', {
      connection: facts.info, transaction: transactionInfo(session, st), address: sender, builtin,
    }, facts.key);
    return verdict ? verdictReply('mailfrom', verdict) : builtinSenderReply(st, sender, builtin);
  }

  /**
   * limits.messagesPerIdentity: one count per MAIL FROM of a session with an identity (the logged-in user,
   * else the certificate's), kept in the store; over the limit, 450 4.7.1 (Postfix smtpd_client_message_rate_limit).
   * A store that cannot answer refuses too (fail closed).
   */
  async #messagesPerIdentity(conn: SmtpClient): Promise<SmtpReply | null> {
    const st = conn.state;
    const limit = st.listener.limits.messagesPerIdentity;
    const identity = st.user ?? st.identity.identity;
    const store = st.generation.store;
    if (!limit || !identity || !store) return null;
    let result;
    try {
      result = await store.rate(STORE_KEYS.messagesPerIdentity(identity), limit.count, limit.windowSeconds);
    } catch (err) {
      this.#log.debug({ cid: conn.id, identity, err: { message: (err as Error).message } }, 'messagesPerIdentity: store unavailable, MAIL FROM refused');
      return reply('limitStoreUnavailable');
    }
    if (result.allowed) return null;
    this.#log.info({ cid: conn.id, identity, count: result.count, resetSeconds: result.resetSeconds }, 'messagesPerIdentity: limit reached');
    return reply('tooMuchMailFromIdentity', { identity });
  }

  /** What the sender binding needs: the listener's senderLogin, the logged-in identity and what else it may use. */
  #senderFacts(conn: SmtpClient): SenderFacts {
    const st = conn.state;
    const { enforce, allowNullSender, table } = st.listener.senderLogin;
    if (!enforce || !st.user) return { enforce, allowNullSender, user: st.user, extra: NO_SENDERS };
    // The pin line's senders belong to the pinned identity, so only to a session logged in as that identity.
    const pinSenders = st.identity.identity === st.user ? st.identity.senders : [];
    return { enforce, allowNullSender, user: st.user, extra: extraSenders(st.user, table ? st.generation.tables.get(table) : undefined, pinSenders) };
  }

  /** RCPT TO: the relay rule, then the rcptto script's verdict, if any, wins (without a script: no promise). */
  rcptTo(conn: SmtpClient, address: SMTPServerAddress, session: SMTPServerSession): Decision {
    const st = conn.state;
    const unsupported = unsupportedParameter(address, RCPT_PARAMETERS);
    if (unsupported) return unsupported;
    if (undeclaredUtf8(address, session.envelope.mailFrom)) return reply('utf8AddressUndeclared');
    // A transaction begun before a revocation: the recipients after it are the next commands, refused as MAIL FROM would be.
    const withdrawn = this.#certificateWithdrawn(conn, 'RCPT TO');
    if (withdrawn) return withdrawn;
    const rcpt = envelopeAddress(address)!;
    const builtin = builtinRelay(rcpt, {
      localDomains: st.generation.localDomains,
      localRecipients: st.generation.localRecipients,
      authenticated: !!st.user,
      trustedCertificateMayRelay: st.listener.relayClientCertificates && !!st.certificate?.verified,
    }, wasBarePostmaster(address));
    if (!st.generation.hasScript(st.listener, 'rcptto')) return relayReply(st, rcpt, builtin);
    return this.#recipientScript(conn, session, address, rcpt, builtin);
  }

  async #recipientScript(
    conn: SmtpClient, session: SMTPServerSession, address: SMTPServerAddress, rcpt: EnvelopeAddress, builtin: BuiltinRelayDecision,
  ): Promise<SmtpReply | null> {
    const facts = sharedConnectionFacts(session, conn.state);
    const transaction = transactionInfo(session, conn.state, address);
    const verdict = await this.#run(conn, 'rcptto', { connection: facts.info, transaction, address: rcpt, builtin }, facts.key);
    return verdict ? verdictReply('rcptto', verdict) : relayReply(conn.state, rcpt, builtin);
  }

  /**
   * The data hook's decision about message `id`: its reply (a refusal, the 250 with a script's text, or null)
   * and the header edits of an accept. The script reads the body through `body` while it runs, if it asks.
   */
  async data(
    conn: SmtpClient, session: SMTPServerSession, id: string, size: number, headers: () => Array<[string, string]>, body: BodyReader,
  ): Promise<DataDecision> {
    const st = conn.state;
    let fields: Array<[string, string]> | undefined;
    const read = (): Array<[string, string]> => (fields ??= headers());
    // Revoked while the message came in (or since RCPT TO): refused before its 250, so nothing acknowledged is withdrawn.
    const withdrawn = this.#certificateWithdrawn(conn, 'DATA');
    if (withdrawn) return { reply: withdrawn, headerEdits: null, hold: null };
    const unbound = this.#headerSenderRefusal(conn, read);
    if (unbound) return { reply: unbound, headerEdits: null, hold: null };
    if (!st.generation.hasScript(st.listener, 'data')) return NO_DATA_DECISION;
    const token = openMessageText(body);
    let verdict: Verdict | undefined;
    try {
      const facts = sharedConnectionFacts(session, st);
      verdict = await this.#run(conn, 'data', {
        connection: facts.info, transaction: transactionInfo(session, st), data: { size, headers: read() },
        message: { token },
      }, facts.key);
    } finally {
      closeMessageText(token);
    }
    if (!verdict) return NO_DATA_DECISION;
    const accepted = verdict.verdict === 'accept' ? verdict : null;
    return {
      reply: verdictReply('data', verdict, id),
      headerEdits: accepted?.headers ?? null,
      hold: accepted?.hold === undefined ? null : { file: st.generation.sandboxFor(st.listener).scriptFile('data') ?? 'data', reason: accepted.hold },
    };
  }

  /** senderLogin.headerFrom: the header's From: and Sender: bound to the login as MAIL FROM is (header-senders.ts). */
  #headerSenderRefusal(conn: SmtpClient, headers: () => Array<[string, string]>): SmtpReply | null {
    const st = conn.state;
    if (!st.listener.senderLogin.headerFrom) return null;
    const facts = this.#senderFacts(conn);
    if (!facts.enforce || !facts.user) return null;
    const refusal = headerSenderRefusal(headers(), facts.user, facts.extra, this.#runtime.parseAddressList);
    if (!refusal) return null;
    if (refusal.problem === 'from-count') return reply('fromHeaderCount', { n: String(refusal.count) });
    if (refusal.problem === 'no-address') return reply('fromHeaderNoAddress');
    return reply(refusal.field === 'From' ? 'fromHeaderNotOwned' : 'senderHeaderNotOwned', { address: refusal.address, login: facts.user });
  }

  /** Last seen, per certificate (written at most once a minute, off this path: engine/pki/sightings.ts). */
  #recordSighting(conn: SmtpClient, cert: PeerCertificate): void {
    const st = conn.state;
    const sightings = this.#runtime.sightings;
    // Within its minute a certificate's sighting is not recorded again: no record to build.
    if (!sightings || sightings.seenRecently(cert.fingerprint.sha256)) return;
    sightings.seen({
      fingerprintSha256: cert.fingerprint.sha256, pinSha256: cert.pin.sha256, serial: cert.serial,
      subject: boundedName(cert.subject.dn), issuer: boundedName(cert.issuer.dn), notAfter: cert.notAfter, listener: st.listener.name,
      identity: st.identity.identity, verdict: cert.verified ? 'verified' : st.identity.pinned ? 'pinned' : cert.verifyError ?? 'invalid',
      lastConnection: conn.id,
    });
  }

  /**
   * The certificate this session was verified or pinned with at its handshake, taken back since: its
   * serial is now on a (reloaded) CRL, or the pin that named the logged-in account is gone from the
   * current pin table. No new transaction then, no more recipients or message in one already begun, and no AUTH EXTERNAL (new handshakes are refused by the CRL,
   * or get no identity). AUTH reads the newest generation's pin table (its session adopts that generation only while its listener is in it).
   */
  #certificateWithdrawn(conn: SmtpClient, command: 'MAIL FROM' | 'RCPT TO' | 'DATA' | 'AUTH'): SmtpReply | null {
    const st = conn.state;
    const refused = `${command} refused`;
    const cert = st.certificate;
    if (!cert) return null;
    // Verified or pinned at the handshake: either way a CRL loaded since that lists it withdraws it. Asked once per set
    // of CRLs, not at every command: a pinned certificate is of its owner's making, and a serial a CRL lists (CRLs are
    // public) with another issuer had it parsed again at each MAIL FROM, RCPT TO and DATA.
    if ((cert.verified || st.identity.pinned) && st.notRevokedBy !== conn.trust) {
      if (conn.trust.isRevoked(cert)) {
        this.#log.info({ cid: conn.id, subject: boundedName(cert.subject.dn), serial: cert.serial, user: st.user }, `client certificate revoked since the handshake: ${refused}`);
        return reply('certificateRevoked');
      }
      st.notRevokedBy = conn.trust;
    }
    const older = st.certificateTrust;
    if (older && older !== conn.trust) {
      // A CRL reloaded since the handshake may list a CA of the chain (an intermediate): what it issued is withdrawn.
      if ((cert.verified || st.identity.pinned) && conn.trust.revokesIssuerOf(conn._socket as TLSSocket)) {
        this.#log.info({ cid: conn.id, subject: boundedName(cert.subject.dn), issuer: boundedName(cert.issuer.dn), user: st.user }, `client certificate's issuing CA revoked since the handshake: ${refused}`);
        return reply('certificateRevoked');
      }
      // The CA list was replaced since the handshake (a reload): the CA the chain ended in may be gone from it.
      if (cert.verified && !conn.trust.stillTrusts(older, older.anchorOf(conn._socket as TLSSocket))) {
        this.#log.info({ cid: conn.id, subject: boundedName(cert.subject.dn), issuer: boundedName(cert.issuer.dn), user: st.user }, `client certificate's CA no longer in caFiles: ${refused}`);
        return reply('certificateCaWithdrawn');
      }
      st.certificateTrust = conn.trust;
    }
    const byCertificate = command === 'AUTH' || st.mechanism === 'CERTIFICATE' || st.mechanism === 'EXTERNAL';
    const name = st.listener.certificateIdentity.pins;
    // MAIL FROM has just adopted the newest generation; a transaction keeps its own, so AUTH, RCPT TO and DATA read the newest's.
    const pinTable = name ? (command === 'MAIL FROM' ? st.generation.tables : this.#runtime.generation.tables).get(name) : undefined;
    const socket = conn._socket as TLSSocket;
    // Verified at the handshake, expired since: the session holds what a handshake now would give it, an
    // unverified ("expired") certificate, whose pin alone may still name its account. Else a client that keeps its
    // connection open would relay (relayClientCertificates) and log in by a certificate no new session accepts.
    if (cert.verified && Date.now() >= Date.parse(cert.notAfter)) {
      const held = st.identity.identity;
      st.certificate = { ...cert, verified: false, verifyError: 'expired', verifyErrorCode: 'CERT_HAS_EXPIRED' };
      st.identity = this.#identityOf(conn, socket, pinTable);
      st.identityRules = st.listener.certificateIdentity;
      this.#log.info({ cid: conn.id, subject: boundedName(cert.subject.dn), notAfter: cert.notAfter, user: st.user, identity: st.identity.identity },
        'client certificate expired since the handshake: no longer verified');
      if (st.identity.identity !== held && byCertificate || this.#mustBeTrusted(conn, st.identity)) {
        this.#log.info({ cid: conn.id, user: st.user }, `logged in with a certificate expired since: ${refused}`);
        return reply('certificateExpired');
      }
      return null;
    }
    // The account may have changed with the pin table, or with the listener's certificateIdentity (a mapping found
    // wrong, say a CN any sub-CA may write, is replaced): a reload's settings are new objects, so found again once.
    const rulesChanged = st.identityRules !== null && st.identityRules !== st.listener.certificateIdentity;
    if (st.identity.via !== 'pin' && !rulesChanged) return null;
    if (!rulesChanged) {
      const [account, ...senders] = parseSenderList(pinTable?.get(cert.pin.sha256) ?? '');
      if (account === st.identity.identity && sameList(senders, st.identity.senders)) return null;
    }
    const now = this.#identityOf(conn, socket, pinTable);
    // The same account (with the senders its pin line names now: one removed is refused): nothing taken back.
    if (now.identity === st.identity.identity) {
      st.identity = now;
      st.identityRules = st.listener.certificateIdentity;
      return null;
    }
    // AUTH EXTERNAL goes on with the account the certificate names now (none: 535), as on a new session.
    if (command !== 'AUTH' && byCertificate || this.#mustBeTrusted(conn, now)) {
      // Nothing adopted: the next command is refused too, as long as the account differs.
      this.#log.info({ cid: conn.id, subject: boundedName(cert.subject.dn), pin: cert.pin.sha256Base64Url, user: st.user, identity: now.identity },
        `the account the client certificate names changed since the handshake (pin removed or certificateIdentity reloaded): ${refused}`);
      return reply('certificatePinRemoved');
    }
    // Not logged in with it, the session still loses the account: scripts see certificateIdentity (and may relay by it).
    this.#log.info({ cid: conn.id, subject: boundedName(cert.subject.dn), pin: cert.pin.sha256Base64Url, before: st.identity.identity, identity: now.identity },
      'the account the client certificate names changed since the handshake: the session\'s certificate identity follows');
    st.identity = now;
    st.identityRules = st.listener.certificateIdentity;
    return null;
  }

  /** `require` (or `strict`) and the certificate is now neither verified nor pinned: a new handshake would get no session. */
  #mustBeTrusted(conn: SmtpClient, identity: CertificateIdentity): boolean {
    const { tls } = conn.state.listener;
    const cert = conn.state.certificate;
    return (tls.clientCertificates === 'require' || tls.strict) && !!cert && !cert.verified && !identity.pinned;
  }

  /**
   * A password login whose users-file entry a reload changed or removed since (a password reset after a leak):
   * no new transaction on it, and the connection is closed (421): one AUTH per session, so the client logs in
   * again on a new one. A temporary reply: an entry re-hashed with a new salt for the same password (a users
   * file regenerated whole) costs a legitimate client a reconnection, never a bounce.
   */
  #loginWithdrawn(conn: SmtpClient): SmtpReply | null {
    const st = conn.state;
    if (st.passwordEntry === null || st.user === null || st.generation.users.get(st.user) === st.passwordEntry) return null;
    this.#log.info({ cid: conn.id, user: st.user }, 'password changed or user removed since the login: MAIL FROM refused');
    return reply('loginWithdrawn');
  }

  /**
   * The session takes the newest generation, if its listener still exists there (hot reload): at each command
   * outside a transaction (postern-connection.ts) and at MAIL FROM; a transaction keeps the one it began with.
   * False: a reload removed its listener (MAIL FROM then refuses: the listener is to take no more mail).
   */
  adoptCurrentGeneration(conn: SmtpClient): boolean {
    const st = conn.state;
    const current = this.#runtime.generation;
    if (current === st.generation) return true;
    const listener = current.config.listeners.find((l) => l.name === st.listener.name);
    if (!listener) return false;
    const old = st.generation;
    st.generation = current.acquire();
    st.listener = listener;
    old.release();
    return true;
  }
}

/** The built-in sender binding's reply: null (smtp-server's 250) when it accepts. */
function builtinSenderReply(st: SmtpClient['state'], sender: EnvelopeAddress | null, builtin: BuiltinSenderDecision): SmtpReply | null {
  if (builtin.accepted) return null;
  const login = st.user ?? '';
  return builtin.reason === 'null-sender'
    ? reply('nullSenderRefused', { login, rule: builtin.reason })
    : reply('senderNotOwned', { sender: sender!.address, login, rule: builtin.reason });
}

/** The relay rule's reply: null (smtp-server's 250) when it accepts. */
function relayReply(st: SmtpClient['state'], rcpt: EnvelopeAddress, builtin: BuiltinRelayDecision): SmtpReply | null {
  return relayRefusal(rcpt.address, builtin, st.generation.config.unknownRecipientReply);
}

/** A client certificate's outcome for the handshake metric: none, verified, pinned, or why it is not trusted. */
function certificateOutcome(cert: { verified: boolean; verifyErrorCode: string | null } | null, pinned: boolean): string {
  if (!cert) return 'none';
  if (cert.verified) return 'verified';
  if (pinned) return 'pinned';
  return `untrusted:${(cert.verifyErrorCode ?? 'UNKNOWN').toLowerCase()}`;
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

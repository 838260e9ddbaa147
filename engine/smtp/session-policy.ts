/**
 * The decisions of a session, hook by hook: built-in rules first, then the listener's script, whose
 * verdict wins. Each method returns the reply to send (or null to go on); nothing here writes to sockets.
 */
import type { TLSSocket } from 'node:tls';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerSession } from 'smtp-server';
import type { PosternConnection } from './postern-connection.ts';
import { spoolIsFull, type Runtime } from './runtime.ts';
import { SmtpReply, localError, sanitizeReplyText } from './reply.ts';
import { connectionInfo, connectionKey, envelopeAddress, sharedConnectionFacts, transactionInfo } from './script-context.ts';
import { runHook } from '../policy/run-hook.ts';
import { verdictReply } from '../policy/verdict.ts';
import { builtinAuth, builtinRelay, type AuthAttempt } from '../policy/builtin-rules.ts';
import { certificateIdentity } from '../policy/certificate-identity.ts';
import { describeCertificate } from '../certificates/index.ts';
import type { PosternServer } from './postern-server.ts';
import type { ConnectionInfo, HookName, Verdict } from '../sandbox/api/index.ts';

/** Hooks whose connection facts the sandbox keeps between calls (see Sandbox.invoke). */
const SHARES_CONNECTION: ReadonlySet<HookName> = new Set(['mailfrom', 'rcptto', 'data']);

export class SessionPolicy {
  readonly #runtime: Runtime;

  constructor(runtime: Runtime) {
    this.#runtime = runtime;
  }

  get #log() { return this.#runtime.logger; }

  async #run(conn: PosternConnection, hook: HookName, ctx: object): Promise<Verdict | undefined> {
    const st = conn.state;
    // The per-message hooks repeat with the same connection facts; connect, helo and auth see them change.
    const info = SHARES_CONNECTION.has(hook) ? (ctx as { connection?: ConnectionInfo }).connection : undefined;
    const key = info && (info === st.factsMemo?.info ? st.factsMemo.key : connectionKey(info));
    return await runHook(st.generation, st.listener, hook, ctx, conn.id, this.#log, key) as Verdict | undefined;
  }

  internalError(conn: PosternConnection, err: unknown): SmtpReply {
    this.#log.error({ cid: conn.id, err }, 'internal error');
    return localError(conn.id);
  }

  /** A connection is ready for its greeting (after the handshake on implicit TLS). */
  async connect(conn: PosternConnection): Promise<SmtpReply | null> {
    const st = conn.state;
    const limits = st.listener.limits;
    const ip = conn.remoteAddress;
    if (this.#runtime.authFailures.count(ip) >= limits.authFailuresPerIp) {
      return new SmtpReply(421, '4.7.0', 'Too many authentication failures, try again later');
    }
    if (conn.secure) {
      st.tlsMode = 'implicit';
      const refusal = this.#tlsEstablished(conn, conn._socket as TLSSocket);
      if (refusal) return refusal;
    }
    const verdict = await this.#run(conn, 'connect', { connection: connectionInfo(conn.session, st) });
    return verdict ? verdictReply('connect', verdict) : null;
  }

  /** STARTTLS completed. */
  starttls(conn: PosternConnection, socket: TLSSocket): SmtpReply | null {
    const st = conn.state;
    if (st.tlsMode === 'implicit') return null; // handled at connect
    st.resetForStartTls();
    st.tlsMode = 'starttls';
    return this.#tlsEstablished(conn, socket);
  }

  /** Describe the client certificate, derive its identity, enforce `require`. */
  #tlsEstablished(conn: PosternConnection, socket: TLSSocket): SmtpReply | null {
    const st = conn.state;
    const tls = st.listener.tls;
    st.certificateRequested = tls.clientCertificates !== 'none';
    // Only the DER is needed: getPeerCertificate() would also build every field and three fingerprints.
    const der = st.certificateRequested ? socket.getPeerX509Certificate()?.raw : undefined;
    if (der) {
      // Without caFiles Node would verify against the public roots: that must never grant anything.
      const verified = tls.caFiles.length > 0 && socket.authorized;
      let errorCode = verified ? null
        : tls.caFiles.length === 0 ? 'NO_CA_CONFIGURED' : String(socket.authorizationError ?? 'UNKNOWN');
      // OpenSSL checks the CRL before it gives up on the issuer: a foreign or self-signed certificate
      // shows up as "no CRL". Report the more fundamental reason.
      if (errorCode === 'UNABLE_TO_GET_CRL') errorCode = (conn._server as unknown as PosternServer).trust.explainMissingCrl(der);
      st.certificate = describeCertificate(der, { verified, errorCode });
    } else {
      st.certificate = null;
    }
    const pinTable = st.listener.certificateIdentity.pins ? st.generation.tables.get(st.listener.certificateIdentity.pins) : undefined;
    st.identity = certificateIdentity(st.listener, st.certificate, pinTable);
    const cert = st.certificate;
    this.#log.info({
      cid: conn.id, tls: socket.getProtocol(), cert: cert ? { subject: cert.subject.dn, verified: cert.verified, error: cert.verifyError } : null,
      identity: st.identity.identity,
    }, 'TLS established');
    if (tls.strict && cert && !cert.verified && !st.identity.pinned) {
      // Strict: no SMTP session at all for an untrusted certificate (mox's handshake-level refusal).
      socket.destroy();
      return new SmtpReply(421, '4.7.1', 'Client certificate not trusted');
    }
    if (tls.clientCertificates === 'require' && !(cert && (cert.verified || st.identity.pinned))) {
      // Postfix smtpd_tls_req_ccert: never a usable session.
      return new SmtpReply(421, '4.7.1', cert ? `Client certificate not trusted (${cert.verifyError})` : 'No client certificate presented');
    }
    if (st.listener.certificateIdentity.autoLogin && st.identity.identity) {
      st.user = st.identity.identity;
      st.mechanism = 'CERTIFICATE';
      conn.session.user = st.identity.identity;
    }
    return null;
  }

  async helo(conn: PosternConnection, name: string, verb: 'HELO' | 'EHLO'): Promise<SmtpReply | null> {
    const st = conn.state;
    if (!st.generation.hasScript(st.listener, 'helo')) return null;
    const info = connectionInfo(conn.session, st);
    const verdict = await this.#run(conn, 'helo', { connection: { ...info, helo: name }, helo: { name, command: verb } });
    return verdict ? verdictReply('helo', verdict) : null;
  }

  /** AUTH with smtp-server's SASL (PLAIN, LOGIN): adapt to authenticate(). */
  async onAuth(conn: PosternConnection, auth: SMTPServerAuthentication): Promise<string | SmtpReply> {
    const username = auth.username ?? '';
    // smtp-server falls back to the authzid when the authcid is empty; then there was no separate authzid.
    const authzid = auth.authcid ? auth.authzid ?? '' : '';
    return this.authenticate(conn, { mechanism: auth.method, username, password: auth.password ?? '', authzid });
  }

  /** Decide an AUTH attempt; returns the username to log in as, or the failure reply. */
  async authenticate(conn: PosternConnection, attempt: AuthAttempt): Promise<string | SmtpReply> {
    const st = conn.state;
    const result = await this.#decideAuth(conn, attempt);
    if (typeof result === 'string') {
      st.user = result;
      st.mechanism = attempt.mechanism;
      st.saslAuthenticated = true;
      this.#log.info({ cid: conn.id, user: result, mechanism: attempt.mechanism }, 'authenticated');
      return result;
    }
    if (result.responseCode >= 500) {
      st.authFailures++;
      const total = this.#runtime.authFailures.record(conn.remoteAddress);
      const limits = st.listener.limits;
      this.#log.warn({ cid: conn.id, mechanism: attempt.mechanism, username: attempt.username, failures: st.authFailures, ipFailures: total }, 'authentication failed');
      const over = st.authFailures - limits.authFailuresBeforeDelay;
      if (over > 0) await new Promise((r) => setTimeout(r, Math.min(over * limits.authFailureDelayMs, 30_000)));
    }
    return result;
  }

  async #decideAuth(conn: PosternConnection, attempt: AuthAttempt): Promise<string | SmtpReply> {
    const st = conn.state;
    const invalid = (): SmtpReply => new SmtpReply(535, '5.7.8', 'Authentication credentials invalid');
    // Never authenticates, whatever a script says.
    if (attempt.mechanism !== 'EXTERNAL' && !attempt.password) return invalid();
    if (attempt.mechanism === 'EXTERNAL' && !st.certificate) return new SmtpReply(535, '5.7.8', 'No client certificate presented');
    const builtin = await builtinAuth(attempt, { certificateIdentity: st.identity.identity, users: st.generation.users });
    const verdict = await this.#run(conn, 'auth', { connection: connectionInfo(conn.session, st), auth: { ...attempt }, builtin });
    if (!verdict) {
      if (builtin.accepted && builtin.username) return builtin.username;
      if (builtin.reason === 'no-identity') return new SmtpReply(535, '5.7.8', 'Client certificate does not identify an account');
      if (builtin.reason === 'authzid-not-permitted') return new SmtpReply(535, '5.7.8', 'Cannot assume requested authorization identity');
      if (builtin.reason === 'certificate-account-mismatch') return new SmtpReply(535, '5.7.8', 'Client certificate belongs to another account');
      return invalid();
    }
    if (verdict.verdict !== 'accept') return verdictReply('auth', verdict)!;
    const username = verdict.username ?? builtin.username
      ?? (attempt.mechanism === 'EXTERNAL' ? attempt.authzid || st.identity.identity : attempt.username);
    return username ? username : invalid();
  }

  async mailFrom(conn: PosternConnection, address: SMTPServerAddress, session: SMTPServerSession): Promise<SmtpReply | null> {
    const st = conn.state;
    if (st.listener.requireTls && !conn.secure) return new SmtpReply(530, '5.7.0', 'Must issue a STARTTLS command first');
    // smtp-server only enforces AUTH when the AUTH command exists; certificate-only listeners need this.
    if (st.listener.auth.required && !st.user) return new SmtpReply(530, '5.7.0', 'Authentication required');
    if (spoolIsFull(this.#runtime)) return new SmtpReply(452, '4.3.1', 'Insufficient system storage');
    this.#adoptCurrentGeneration(conn);
    st.transactionId = this.#runtime.spool.newId();
    const verdict = await this.#run(conn, 'mailfrom', {
      connection: sharedConnectionFacts(session, st).info, transaction: transactionInfo(session, st), address: envelopeAddress(address),
    });
    return this.#decided(conn, 'mailfrom', verdict);
  }

  async rcptTo(conn: PosternConnection, address: SMTPServerAddress, session: SMTPServerSession): Promise<SmtpReply | null> {
    const st = conn.state;
    const rcpt = envelopeAddress(address)!;
    const builtin = builtinRelay(rcpt.domain, {
      localDomains: st.generation.localDomains,
      authenticated: !!st.user,
      trustedCertificateMayRelay: st.listener.relayClientCertificates && !!st.certificate?.verified,
    });
    const verdict = st.generation.hasScript(st.listener, 'rcptto')
      ? await this.#run(conn, 'rcptto', { connection: sharedConnectionFacts(session, st).info, transaction: transactionInfo(session, st), address: rcpt, builtin })
      : undefined;
    if (verdict) return this.#decided(conn, 'rcptto', verdict);
    if (builtin.accepted) return null;
    return new SmtpReply(554, '5.7.1', `<${rcpt.address}>: Relay access denied`);
  }

  async data(conn: PosternConnection, session: SMTPServerSession, size: number, headers: Array<[string, string]>): Promise<SmtpReply | null> {
    const st = conn.state;
    if (!st.generation.hasScript(st.listener, 'data')) return null;
    const verdict = await this.#run(conn, 'data', {
      connection: sharedConnectionFacts(session, st).info, transaction: transactionInfo(session, st), data: { size, headers },
    });
    if (verdict?.verdict === 'accept' && verdict.text) st.acceptText = `2.0.0 ${sanitizeReplyText(verdict.text)}`;
    return verdict ? verdictReply('data', verdict) : null;
  }

  /** The reply for a verdict; an accept's own text replaces the next 250's. */
  #decided(conn: PosternConnection, hook: 'mailfrom' | 'rcptto', verdict: Verdict | undefined): SmtpReply | null {
    if (!verdict) return null;
    if (verdict.verdict === 'accept' && verdict.text) conn.state.acceptText = sanitizeReplyText(verdict.text);
    return verdictReply(hook, verdict);
  }

  /** A new transaction takes the newest generation, if its listener still exists there (hot reload). */
  #adoptCurrentGeneration(conn: PosternConnection): void {
    const st = conn.state;
    const current = this.#runtime.generation;
    if (current === st.generation) return;
    const listener = current.config.listeners.find((l) => l.name === st.listener.name);
    if (!listener) return;
    const old = st.generation;
    st.generation = current.acquire();
    st.listener = listener;
    old.release();
  }
}

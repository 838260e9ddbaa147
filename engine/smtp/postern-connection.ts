/**
 * One SMTP connection: smtp-server's SMTPConnection, extended where Postern differs — a per-listener
 * greeting delay, per-connection AUTH offers (EXTERNAL only after TLS with a usable certificate), AUTH
 * EXTERNAL itself, the HELO hook, and replies that carry our own enhanced status codes.
 */
import { logRefusal } from './decision-log.ts';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import sasl from 'smtp-server/lib/sasl.js';
import type { SMTPServer } from 'smtp-server';
import type net from 'node:net';
import { ConnectionState } from './connection-state.ts';
import { ENHANCED_CODE_PREFIX, SmtpReply } from './reply.ts';
import { parseExternalResponse } from './sasl-external.ts';
import { batchReply } from './reply-batch.ts';
import type { PosternServer } from './postern-server.ts';

type Callback = () => void;

/** Socket errors that only say the client went away (smtp-server's own list). */
const CLIENT_WENT_AWAY = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH']);

export class PosternConnection extends SMTPConnection {
  readonly state: ConnectionState;
  /** Set while our EHLO reply is being written, so send() can put in this connection's AUTH line. */
  #rewriteEhlo = false;

  constructor(server: PosternServer, socket: net.Socket, options?: Record<string, unknown>) {
    super(server as unknown as SMTPServer, socket, options);
    const generation = server.runtime.generation.acquire();
    this.state = new ConnectionState(generation, generation.listener(server.listenerName));
  }

  get #server(): PosternServer { return this._server as unknown as PosternServer; }

  /** smtp-server waits a fixed 100 ms before the greeting (early-talker check); ours is per listener. */
  override init(): void {
    this._setListeners(() => {
      const opts = this._server.options as { maxClients?: number };
      if (opts.maxClients && this._server.connections.size > opts.maxClients) {
        return this.send(421, `4.7.0 ${this.name} Too many connected clients, try again in a moment`, false);
      }
      const delay = this.#server.greetingDelayMs;
      if (delay > 0) setTimeout(() => this.connectionReady(), delay).unref();
      else this.connectionReady();
    });
  }

  /**
   * Every reply passes here. Texts that already start with an enhanced code keep it (smtp-server would
   * otherwise add its own guess); a reply to a verdict that asked for it closes the connection.
   */
  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (this.#rewriteEhlo && code === 250 && Array.isArray(data)) data = this.#ehloLines(data);
    if (this.state.acceptText !== null && code === 250 && typeof data === 'string') {
      data = this.state.acceptText;
      this.state.acceptText = null;
    }
    const ownCode = typeof data === 'string' ? ENHANCED_CODE_PREFIX.test(data)
      : Array.isArray(data) && data.length > 0 && ENHANCED_CODE_PREFIX.test(data[0]!);
    // Refusals Postern decided are logged where they are decided (with their reason); these are smtp-server's own.
    if (code >= 400 && !this.state.refusalLogged) this.#logProtocolRefusal(code, data, context);
    this.state.refusalLogged = false;
    batchReply(this._socket as net.Socket);
    super.send(code, data, ownCode ? false : context);
    if (code >= 400 && this.state.disconnectAfterReply && code !== 421) {
      this.state.disconnectAfterReply = false;
      this.close();
    }
  }

  /**
   * A client that resets the connection outside a mail transaction (many do, right after QUIT) is the
   * normal end of a connection: smtp-server still logs it at error level, once per socket. Debug here.
   */
  override _onError(err: Error & { code?: string; remoteAddress?: string }): void {
    if (err.code !== undefined && CLIENT_WENT_AWAY.has(err.code) && !this.session.envelope?.mailFrom) {
      this.#server.runtime.logger.debug({ cid: this.id, client: this.remoteAddress, code: err.code }, 'client went away (%s)', err.code);
      this.close();
      return;
    }
    super._onError(err);
  }

  #logProtocolRefusal(code: number, data: string | string[] | null | undefined, context: string | false | undefined): void {
    const text = Array.isArray(data) ? data.join(' ') : data ?? '';
    const mail = this.session.envelope?.mailFrom;
    logRefusal(this.#server.runtime.logger, this, typeof context === 'string' ? context.toUpperCase() : 'SMTP',
      { responseCode: code, enhanced: '', text, reason: code === 530 && /authentication required/i.test(text) ? 'auth.required' : 'SMTP protocol rule (smtp-server)' },
      { from: mail ? mail.address : undefined, id: this.state.transactionId });
  }

  /** Mechanisms offered to this client right now. */
  offeredMechanisms(): string[] {
    const st = this.state;
    const listener = st.listener;
    if (st.saslAuthenticated) return [];
    // Never offer AUTH in plaintext on a listener that can do TLS (credentials would cross in clear).
    if (listener.tls.mode !== 'none' && !this.secure) return [];
    return listener.auth.mechanisms.filter((m) => m !== 'EXTERNAL' || this.#externalUsable());
  }

  #externalUsable(): boolean {
    const st = this.state;
    if (!this.secure || !st.certificate) return false;
    return st.certificate.verified || st.identity.pinned || st.generation.hasScript(st.listener, 'auth');
  }

  #ehloLines(lines: string[]): string[] {
    const mechanisms = this.offeredMechanisms();
    const out = lines.filter((l) => !/^AUTH( |$)/.test(l));
    if (mechanisms.length) out.splice(Math.min(out.length, 6), 0, `AUTH ${mechanisms.join(' ')}`);
    return out;
  }

  override handler_EHLO(command: Buffer, callback: Callback): void { this.#helo('EHLO', command, callback); }
  override handler_HELO(command: Buffer, callback: Callback): void { this.#helo('HELO', command, callback); }

  #helo(verb: 'HELO' | 'EHLO', command: Buffer, callback: Callback): void {
    const base = verb === 'EHLO' ? super.handler_EHLO : super.handler_HELO;
    const parts = command.toString().trim().split(/\s+/);
    const runBase = (): void => {
      this.#rewriteEhlo = true;
      try {
        base.call(this, command, callback);
      } finally {
        this.#rewriteEhlo = false;
      }
      if (this.hostNameAppearsAs) {
        this.state.heloName = this.hostNameAppearsAs;
        this.state.heloCommand = verb;
      }
    };
    if (parts.length !== 2) return runBase(); // smtp-server answers the syntax error
    this.#server.policy.helo(this, parts[1]!, verb).then((reply) => {
      if (reply) {
        this.#reply(reply);
        return callback();
      }
      runBase();
    }, (err: unknown) => {
      this.#reply(this.#server.policy.internalError(this, err));
      callback();
    });
  }

  override handler_AUTH(command: Buffer, callback: Callback): void {
    const args = command.toString().trim().split(/\s+/);
    const method = (args[1] ?? '').toUpperCase();
    const st = this.state;
    const refuse = (reply: SmtpReply): void => { this.#reply(reply); callback(); };
    if (st.saslAuthenticated) return refuse(new SmtpReply(503, '5.5.1', 'Already authenticated'));
    if (this.session.envelope.mailFrom) return refuse(new SmtpReply(503, '5.5.1', 'AUTH not permitted during a mail transaction'));
    if (st.listener.tls.mode !== 'none' && !this.secure) {
      return refuse(new SmtpReply(538, '5.7.11', 'Encryption required for requested authentication mechanism (issue STARTTLS first)'));
    }
    if (!st.listener.auth.mechanisms.includes(method as 'PLAIN')) return refuse(new SmtpReply(504, '5.5.4', 'Unrecognized authentication type'));
    // An address over its auth-failure limit gets no further AUTH on any connection, even one opened before.
    this.#server.policy.authAllowed(this).then((refusal) => {
      if (refusal) return refuse(refusal);
      if (method === 'EXTERNAL') return this.#authExternal(args.slice(2), callback);
      // smtp-server's own AUTH refuses any AUTH once session.user is set, but a certificate auto-login is not a
      // SASL login: one AUTH is still allowed, so run its mechanism directly (a failure keeps the cert login).
      const mechanism = (sasl as unknown as Record<string, (this: SMTPConnection, args: string[], cb: Callback) => void>)[`SASL_${method}`]!;
      mechanism.call(this, args.slice(2), callback);
    }, (err: unknown) => refuse(this.#server.policy.internalError(this, err)));
  }

  #authExternal(rest: string[], callback: Callback): void {
    if (rest.length > 1) {
      this.#reply(new SmtpReply(501, '5.5.2', 'Syntax: AUTH EXTERNAL [initial-response]'));
      return callback();
    }
    if (rest.length === 1) return this.#finishExternal(rest[0]!, false, callback);
    this._nextHandler = (line: Buffer, cb: Callback) => this.#finishExternal(line.toString(), true, cb);
    this.send(334);
    callback();
  }

  #finishExternal(response: string, continuation: boolean, callback: Callback): void {
    const parsed = parseExternalResponse(response, continuation);
    if (!parsed.ok) {
      this.#reply(parsed.cancelled ? new SmtpReply(501, '5.7.0', 'Authentication aborted') : new SmtpReply(501, '5.5.2', 'Invalid base64 in SASL response'));
      return callback();
    }
    this.#server.policy.authenticate(this, { mechanism: 'EXTERNAL', username: parsed.authzid, password: '', authzid: parsed.authzid })
      .then((result) => {
        if (result instanceof SmtpReply) {
          this.#reply(result);
          return callback();
        }
        this.session.user = result;
        this.session.transmissionType = this._transmissionType();
        this.send(235, 'Authentication successful', 'AUTH_SUCCESS');
        callback();
      }, (err: unknown) => {
        this.#reply(this.#server.policy.internalError(this, err));
        callback();
      });
  }

  #reply(reply: SmtpReply): void {
    if (reply.disconnect && reply.responseCode !== 421) this.state.disconnectAfterReply = true;
    this.send(reply.responseCode, reply.message);
  }
}

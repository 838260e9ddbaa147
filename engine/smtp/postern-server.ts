/**
 * One listener: smtp-server's SMTPServer, creating PosternConnections and routing its hooks to the
 * session policy. smtp-server's callbacks get SmtpReply errors, whose responseCode and text go on the wire.
 */
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession, type SMTPServerAddress, type SMTPServerAuthentication, type SMTPServerAuthenticationResponse, type SMTPServerDataStream } from 'smtp-server';
import type net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { PosternConnection } from './postern-connection.ts';
import { SessionPolicy } from './session-policy.ts';
import { receiveMessage } from './message-intake.ts';
import { SmtpReply } from './reply.ts';
import type { Runtime } from './runtime.ts';
import type { TrustedIssuers } from '../certificates/index.ts';
import { LocalConnectionCounts, type ConnectionCounts } from '../cluster/shared-counters.ts';

/** Everything a listener is built from (see listener-options.ts). */
export interface ListenerSetup {
  name: string;
  options: SMTPServerOptions;
  greetingDelayMs: number;
  maxConnectionsPerIp: number;
  trust: TrustedIssuers;
}

const connectionOf = new WeakMap<SMTPServerSession, PosternConnection>();

type Done = (err?: Error | null) => void;

export class PosternServer extends SMTPServer {
  readonly runtime: Runtime;
  readonly listenerName: string;
  readonly policy: SessionPolicy;
  greetingDelayMs: number;
  maxConnectionsPerIp: number;
  /** The CAs client certificates are verified against (replaced on certificate rotation). */
  trust: TrustedIssuers;
  /** Open connections per client IP: this listener's own map, or counts shared by every worker process. */
  readonly #perIp: ConnectionCounts;

  constructor(runtime: Runtime, setup: ListenerSetup) {
    super(setup.options);
    // smtp-server wraps the logger so that every call, even at a disabled level, first copies its fields
    // (a few per command); pino takes the same (fields, format, ...args) calls, and a disabled level is free.
    (this as unknown as { logger: unknown }).logger = setup.options.logger;
    this.runtime = runtime;
    this.listenerName = setup.name;
    this.policy = new SessionPolicy(runtime);
    this.greetingDelayMs = setup.greetingDelayMs;
    this.maxConnectionsPerIp = setup.maxConnectionsPerIp;
    this.trust = setup.trust;
    this.#perIp = runtime.connections ?? new LocalConnectionCounts();
  }

  /** smtp-server's connect(), creating our connection class. */
  override connect(socket: net.Socket, socketOptions?: Record<string, unknown>): void {
    const self = this as unknown as { connections: Set<unknown>; _onError(e: Error): void; _onClientConnect(d: unknown): void };
    const connection = new PosternConnection(this, socket, socketOptions);
    connectionOf.set(connection.session, connection);
    self.connections.add(connection);
    connection.on('error', (err: Error) => self._onError(err));
    connection.on('connect', (data: unknown) => self._onClientConnect(data));
    connection.init();
  }

  #conn(session: SMTPServerSession): PosternConnection {
    const conn = connectionOf.get(session);
    if (!conn) throw new Error('session without connection');
    return conn;
  }

  override onConnect(session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    const ip = conn.remoteAddress;
    const admitted = (ok: boolean): void => {
      if (!ok) return callback(new SmtpReply(421, '4.7.0', 'Too many connections from your address'));
      // Gone while the shared count answered: onClose did not count it, so give the slot back here.
      if ((conn as unknown as { _closed?: boolean })._closed) return this.#perIp.release(this.#ipKey(ip));
      conn.state.countedForIp = true;
      settle(this.policy.connect(conn), callback, conn, this.policy);
    };
    const ok = this.#perIp.acquire(this.#ipKey(ip), ip, this.maxConnectionsPerIp, (conn as unknown as { remotePort?: number }).remotePort);
    if (typeof ok === 'boolean') admitted(ok);
    else ok.then(admitted, (err: unknown) => callback(this.policy.internalError(conn, err)));
  }

  #ipKey(ip: string): string { return `${this.listenerName} ${ip}`; }

  override onSecure(socket: TLSSocket, session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    try {
      const refusal = this.policy.starttls(conn, socket);
      callback(refusal);
    } catch (err) {
      callback(this.policy.internalError(conn, err));
    }
  }

  override onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, callback: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void): void {
    const conn = this.#conn(session);
    this.policy.onAuth(conn, auth).then(
      (result) => (result instanceof SmtpReply ? callback(result) : callback(null, { user: result })),
      (err: unknown) => callback(this.policy.internalError(conn, err)),
    );
  }

  override onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    settle(this.policy.mailFrom(conn, address, session), callback, conn, this.policy);
  }

  override onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    settle(this.policy.rcptTo(conn, address, session), callback, conn, this.policy);
  }

  override onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback: (err?: Error | null, message?: string) => void): void {
    const conn = this.#conn(session);
    receiveMessage(conn, stream, session, this.runtime, this.policy).then(
      (message) => callback(null, message),
      (err: Error) => {
        if (err instanceof SmtpReply && err.disconnect && err.responseCode !== 421) conn.state.disconnectAfterReply = true;
        callback(err);
      },
    );
  }

  override onClose(session: SMTPServerSession): void {
    const conn = connectionOf.get(session);
    if (!conn) return;
    if (conn.state.countedForIp) this.#perIp.release(this.#ipKey(conn.remoteAddress));
    conn.state.generation.release();
  }
}

/** Adapt a policy decision to smtp-server's callback; unexpected errors fail closed. */
function settle(decision: Promise<SmtpReply | null>, callback: Done, conn: PosternConnection, policy: SessionPolicy): void {
  decision.then((reply) => {
    if (reply?.disconnect && reply.responseCode !== 421) conn.state.disconnectAfterReply = true;
    callback(reply);
  }, (err: unknown) => callback(policy.internalError(conn, err)));
}

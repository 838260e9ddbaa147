/**
 * Outbound SMTP connections (nodemailer SMTPConnection), kept open between transactions and reused for
 * the same destination and TLS settings: up to MAX_MESSAGES transactions each, closed after IDLE_MS idle.
 * Wraps nodemailer's callbacks and events into promises that always settle.
 */
import type SMTPConnectionClass from 'nodemailer/lib/smtp-connection';
import type { SMTPConnectionSendInfo, SMTPEnvelope } from 'nodemailer/lib/smtp-connection';
import { createRequire } from 'node:module';
import { TLSSocket } from 'node:tls';
import type { ConnectionSecurity } from './outbound-tls.ts';
import { ReplyDeadline } from './reply-deadline.ts';
import { messagePieces } from './message-pieces.ts';
import { isMarkedMalformed, markMalformedReplies } from './malformed-replies.ts';

// nodemailer's CommonJS build, not its ES modules: those import node:http (its fetch helper), and an ES import of
// node:http reads every export of it, one of which loads Node's own fetch (undici): ~20 ms of CPU at every start of
// a process (test/app/startup-modules.test.ts). Same code either way (both are built from one source).
// Loaded by the first connection, not at start: a worker of postern serve never delivers (its queue process does),
// nor does a command, yet each loaded it (~10 files, ~20 ms of CPU).
let smtpConnectionClass: typeof SMTPConnectionClass | undefined;
const smtpConnection = (): typeof SMTPConnectionClass =>
  smtpConnectionClass ??= createRequire(import.meta.url)('nodemailer/lib/smtp-connection') as typeof SMTPConnectionClass;
type SMTPConnection = SMTPConnectionClass;

const MAX_MESSAGES = 100;
const IDLE_MS = 5000;
const QUIT_WAIT_MS = 2000;
/**
 * At a stop, how long a transaction whose message went out whole is left to get its verdict: below the 30 s
 * after which `postern serve`'s supervisor kills a child that has not stopped (supervisor.ts stop()).
 */
export const STOP_VERDICT_WAIT_MS = 20_000;

export interface Endpoint {
  /** Host name (for logs and TLS); `address` is what we connect to. */
  host: string;
  address: string;
  port: number;
  security: ConnectionSecurity;
}

/**
 * nodemailer answers any EHLO refusal but 421 with HELO. HELO stands in for an EHLO the next hop does not know (RFC 5321
 * §4.1.4: 500, 502, 5xx), not for a temporary failure: a 4xx let the session go on with HELO, without extensions, so
 * an 8-bit message bounced for good (no 8BITMIME) over a refusal the next hop had said was temporary, and in `may`
 * mode STARTTLS was skipped. A 4xx to EHLO fails the session (ECONNECTION, its reply), as a 4xx greeting does.
 */
function ehloTemporaryFailureIsFinal(conn: SMTPConnection): void {
  const internals = conn as unknown as { _actionEHLO(str: string): void; _onError(err: Error, code: string, response: string, command: string): void };
  const actionEhlo = internals._actionEHLO.bind(conn);
  internals._actionEHLO = (str) => {
    // Nor for a malformed reply (malformed-replies.ts), which is no refusal either.
    if (isMarkedMalformed(str)) return internals._onError(new Error('Malformed reply to EHLO'), 'ECONNECTION', str, 'EHLO');
    if (!/^4/.test(str)) return actionEhlo(str);
    internals._onError(new Error('EHLO refused temporarily. response=' + str), 'ECONNECTION', str, 'EHLO');
  };
}

/** Connections with equal keys are interchangeable: same destination, TLS settings and key material. */
export function poolKey(host: string, port: number, security: ConnectionSecurity): string {
  return `${host}:${port}|${security.key}`;
}

export interface ConnectOptions {
  heloName: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  /** For the reply to the message's final dot (delivery.endOfDataTimeoutMs); commandTimeoutMs without it. */
  endOfDataTimeoutMs?: number;
}

/** Facts about an established connection, for logs. */
export interface ConnectionInfo {
  remote: string;
  /** The name the next hop gave itself in its (last) EHLO or HELO reply, or null: see greetsAs(). */
  greetsAs: string | null;
  tls: { protocol: string | null; cipher: string; authorized: boolean; peerFingerprint: string | null } | null;
}

/**
 * The server a connection reaches, by address and port: one server may be the next hop of several destinations (the
 * MX host names of domains on one shared host), and it counts our sessions by our address, whatever name we used.
 */
export function serverOf(address: string, port: number): string {
  return `${address}|${port}`;
}

/** The error code of a 2yz reply to the message that came before its final dot was sent (PooledConnection). */
export const EARLY_REPLY = 'EEARLYREPLY';

export class PooledConnection {
  readonly conn: SMTPConnection;
  readonly key: string;
  readonly destination: string;
  /** serverOf() its address and port. */
  readonly server: string;
  readonly info: ConnectionInfo;
  messages = 0;
  /** The current transaction's message, up to its final dot, has been handed to the socket. */
  endOfDataSent = false;
  /** A transaction (send()) is under way. */
  #sending = false;
  /** A reply line came after the 354 and before the message's final dot was handed to the socket. */
  #replyBeforeEnd = false;
  #alive = true;
  idleTimer: NodeJS.Timeout | null = null;
  /** A stop's limit on the wait for a verdict (closeAfterVerdict). */
  #stopTimer: NodeJS.Timeout | null = null;
  readonly #onGone = new Set<(err: Error) => void>();

  constructor(conn: SMTPConnection, key: string, destination: string, server: string, info: ConnectionInfo, deadline?: ReplyDeadline) {
    this.conn = conn;
    this.key = key;
    this.destination = destination;
    this.server = server;
    this.info = info;
    // nodemailer tells no one when the message is out: its send stream (created once DATA got 354) ends then.
    const internals = conn as unknown as {
      _createSendStream(cb: unknown): NodeJS.ReadableStream; _envelope?: { size?: number };
      _actionDATA(str: string, cb: (err: Error | null) => void): void; _formatError(message: string, code: string, response: string, command: string): Error;
      _actionSMTPStream(str: string, cb: (err: Error | null, info?: unknown) => void): void;
      _onData(chunk: Buffer): void; _responseQueue?: unknown[]; _remainder?: string;
    };
    // nodemailer sends the message after a 2yz reply to DATA as well as after 354. A 2yz is no go-ahead (RFC 5321
    // §4.3.2): the next hop is not taking a message, and would read its lines as commands (a RCPT TO in the body
    // sent to someone else); or its replies are out of step with our commands. Deferred, as Postfix does ("in
    // reply to DATA command"), without the message, and the connection is not used again (EPROTOCOL).
    const actionData = internals._actionDATA.bind(conn);
    internals._actionDATA = (str, cb) => {
      if (!/^2/.test(str)) return actionData(str, cb);
      cb(internals._formatError('No go-ahead (354) in reply to DATA command', 'EPROTOCOL', str, 'DATA'));
    };
    // nodemailer takes the first reply after the 354 as the verdict on the message, even one the next hop sent before
    // the message's final dot was handed to the socket (read with the 354, or while the message was going out, and
    // processed only later). A 2yz then is no acceptance (RFC 5321 §4.1.1.4: the message is the next hop's only once
    // its final dot arrives): a stray reply, out of step, recorded the message delivered and took it off the queue
    // though the next hop had not seen its end. Such a reply fails the transaction (EEARLYREPLY), and the connection
    // is not used again; a refusal (4yz, 5yz) sent before the end, as by a next hop that will not read a message too
    // large, is still its verdict.
    // Any byte but blanks (nodemailer skips blank lines between replies) counts, a line's end or not: a reply begun
    // before the end and finished after it (its line completed once the message was out) is as early.
    let bodyGoingOut = false;
    const onData = internals._onData.bind(conn);
    internals._onData = (chunk) => {
      if (bodyGoingOut && /\S/.test(chunk.toString('latin1'))) this.#replyBeforeEnd = true;
      onData(chunk);
    };
    const actionStream = internals._actionSMTPStream.bind(conn);
    internals._actionSMTPStream = (str, cb) => {
      if (!this.#replyBeforeEnd || !/^2/.test(str)) return actionStream(str, cb);
      cb(internals._formatError('Reply to the message before its end was sent', EARLY_REPLY, str, 'DATA'));
    };
    const createSendStream = internals._createSendStream.bind(conn);
    internals._createSendStream = (cb) => {
      const stream = createSendStream(cb);
      // What was read after the 354 and not processed yet came before any of the message: whole lines, and the
      // start of one (nodemailer keeps it apart until its line ends).
      this.#replyBeforeEnd = [...(internals._responseQueue ?? []), internals._remainder ?? ''].some((line) => /\S/.test(String(line)));
      bodyGoingOut = true;
      deadline?.bodyStarted(internals._envelope?.size ?? 0);
      stream.once('end', () => { this.endOfDataSent = true; bodyGoingOut = false; deadline?.bodyEnded(); });
      return stream;
    };
    conn.on('error', (err: Error) => this.#gone(err));
    conn.on('end', () => this.#gone(new Error('connection closed')));
  }

  get alive(): boolean { return this.#alive && !this.conn.destroyed; }

  #gone(err: Error): void {
    this.#alive = false;
    for (const fn of [...this.#onGone]) fn(err);
  }

  /** Called once when the connection dies (error or close); returns an unsubscribe function. */
  onGone(fn: (err: Error) => void): () => void {
    this.#onGone.add(fn);
    return () => this.#onGone.delete(fn);
  }

  /**
   * One transaction: `prefix` (a DKIM signature's fields) then `message`. Rejects with nodemailer's error (responseCode,
   * response, command, rejectedErrors).
   */
  send(envelope: SMTPEnvelope, message: Buffer, prefix?: Buffer): Promise<SMTPConnectionSendInfo> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const off = this.onGone((err) => finish(err));
      const finish = (err: Error | null, info?: SMTPConnectionSendInfo): void => {
        if (settled) return;
        settled = true;
        this.#sending = false;
        off();
        if (err) reject(err);
        else resolve(info!);
      };
      if (!this.alive) return finish(Object.assign(new Error('connection closed'), { code: 'ECONNECTION', command: 'API' }));
      this.messages++;
      this.endOfDataSent = false;
      this.#sending = true;
      // In pieces, not whole: see message-pieces.ts (each transaction held a dot-stuffed copy until the next hop read it).
      this.conn.send(envelope, messagePieces(message, prefix), (err, info) => finish(err ?? null, info));
    });
  }

  /** RSET after a failed transaction; false when the connection is not reusable. */
  reset(): Promise<boolean> {
    if (!this.alive) return Promise.resolve(false);
    return new Promise((resolve) => {
      const off = this.onGone(() => { off(); resolve(false); });
      this.conn.reset((err) => { off(); resolve(!err); });
    });
  }

  /** The whole message went out and its verdict (the reply to the final dot) has not come yet. */
  get awaitingVerdict(): boolean { return this.#sending && this.endOfDataSent; }

  /**
   * A stop while the verdict is awaited: dropping the connection now would leave the next hop with the message
   * and us without its answer, so the retry would deliver it twice (RFC 1047). The transaction is left to end
   * (the pool closes the connection at its release) for up to `ms`, then dropped.
   */
  closeAfterVerdict(ms: number): void {
    this.#stopTimer ??= setTimeout(() => this.close(false), ms);
  }

  /** QUIT politely when idle (`graceful`), else drop the connection (a transaction on it fails). */
  close(graceful = true): void {
    this.#alive = false;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.#stopTimer) clearTimeout(this.#stopTimer);
    this.#stopTimer = null;
    try {
      if (graceful && this.conn.stage === 'connected' && !this.conn.destroyed) {
        this.conn.quit();
        // A next hop that never answers QUIT must not keep the socket (or the process) around.
        setTimeout(() => this.conn.close(), QUIT_WAIT_MS).unref();
      } else {
        this.conn.close();
      }
    } catch {
      this.conn.close();
    }
  }
}

export class ConnectionPool {
  readonly #idle = new Map<string, PooledConnection[]>();
  readonly #open = new Map<string, Set<PooledConnection>>();
  /** Connections still being set up (greeting, EHLO, STARTTLS), and whether greeted: closed too when the pool closes. */
  readonly #opening = new Map<SMTPConnection, { destination: string; server: string; greeted: boolean; outcome: Promise<boolean> }>();
  /** Connections we closed whose end the next hop may not have seen yet (QUIT unanswered), by destination. */
  readonly #leaving = new Map<string, Set<PooledConnection>>();
  #closed = false;

  /** Open connections (busy or idle) to a destination: what its connection limit counts. */
  openCount(destination: string): number { return this.#open.get(destination)?.size ?? 0; }

  /**
   * Connections of ours the next hop has let in: open ones, ones it greeted that are still being set up (EHLO,
   * STARTTLS) and ones closed but not yet gone. A refusal at the greeting while one is there may be the next hop's
   * limit on connections, not a refusal of all mail. (Not ones still waiting for their greeting: a next hop that
   * refuses every session would, with several connections under way, always have one.) Counted are those to the
   * destination and those to the same `server` (serverOf) under another name: a shared host limiting sessions per
   * client address refused one domain's connection while another domain's was in session with it.
   */
  presentCount(destination: string, server: string): number {
    const present = (c: { destination: string; server: string }): boolean => c.destination === destination || c.server === server;
    let n = 0;
    for (const o of this.#opening.values()) if (o.greeted && present(o)) n++;
    for (const map of [this.#open, this.#leaving]) {
      for (const set of map.values()) for (const pc of set) if (present(pc)) n++;
    }
    return n;
  }
  /**
   * Whether a connection of ours to `destination` still waiting for its greeting is greeted (220), once each has been
   * greeted or has failed (within its greeting timeout). A refusal at the greeting while another waits for its own (a
   * host that pauses before it greets) may be the host's limit on connections: that one's greeting tells.
   */
  greetedElsewhere(destination: string, server: string): Promise<boolean> {
    const waiting = [...this.#opening.values()].filter((o) => (o.destination === destination || o.server === server) && !o.greeted).map((o) => o.outcome);
    if (!waiting.length) return Promise.resolve(false);
    return new Promise((resolve) => {
      let left = waiting.length;
      for (const outcome of waiting) void outcome.then((greeted) => { if (greeted) resolve(true); else if (--left === 0) resolve(false); });
    });
  }

  get idleCount(): number { let n = 0; for (const l of this.#idle.values()) n += l.length; return n; }
  /** Pool keys with idle connections, and destinations with open ones (tests: neither keeps one with none). */
  get destinationsHeld(): { idle: number; open: number } { return { idle: this.#idle.size, open: this.#open.size }; }

  /** The most recently used live idle connection with this key, taken out of the pool. */
  takeIdle(key: string): PooledConnection | null {
    const list = this.#idle.get(key);
    if (!list) return null;
    let taken: PooledConnection | null = null;
    while (!taken && list.length) {
      const pc = list.pop()!;
      if (pc.idleTimer) clearTimeout(pc.idleTimer);
      pc.idleTimer = null;
      if (pc.alive) taken = pc;
    }
    // An emptied list goes: kept, every next hop ever reused stayed in the pool for the process's life.
    if (!list.length) this.#idle.delete(key);
    return taken;
  }

  /** Close idle connections to `destination` that another key holds, to stay within its connection limit. */
  makeRoom(destination: string, limit: number): void {
    if (this.openCount(destination) < limit) return;
    for (const [key, list] of this.#idle) {
      for (const pc of [...list]) {
        if (pc.destination !== destination) continue;
        list.splice(list.indexOf(pc), 1);
        if (!list.length) this.#idle.delete(key);
        // Gone from the count now, as at release: its QUIT is answered later, and counted until then every idle
        // connection to the destination was closed to make room for one (each message with its own client
        // certificate cost all the others their pooled connections).
        this.#letGo(pc, true);
        if (this.openCount(destination) < limit) return;
      }
    }
  }

  async open(endpoint: Endpoint, opts: ConnectOptions): Promise<PooledConnection> {
    if (this.#closed) throw Object.assign(new Error('delivery is shutting down'), { code: 'ECONNECTION', command: 'API' });
    const s = endpoint.security;
    const deadline = new ReplyDeadline(opts.commandTimeoutMs, opts.endOfDataTimeoutMs);
    const conn = new (smtpConnection())({
      host: endpoint.address,
      port: endpoint.port,
      secure: s.secure,
      ignoreTLS: s.ignoreTLS,
      requireTLS: s.requireTLS,
      opportunisticTLS: s.opportunisticTLS,
      ...(s.servername ? { servername: s.servername } : {}),
      tls: s.tls,
      name: opts.heloName,
      connectionTimeout: opts.connectTimeoutMs,
      greetingTimeout: opts.connectTimeoutMs,
      socketTimeout: opts.commandTimeoutMs,
      // Only for the reply deadlines: the transaction log tells of each command and reply.
      logger: deadline.logger,
      transactionLog: true,
    });
    deadline.attach(conn);
    ehloTemporaryFailureIsFinal(conn);
    markMalformedReplies(conn);
    // On implicit TLS, once the next hop took part in the handshake (completed it, or answered it with an alert), a
    // failure is TLS's or the next hop's verdict on our certificate (a close right after the handshake), as after
    // STARTTLS: not an unreachable host. A host that accepts the connection and says nothing stays unreachable.
    let handshakeDone = false;
    if (s.secure) {
      const internals = conn as unknown as { _connectToHost(opts: unknown, secure: boolean): void; _socket?: NodeJS.EventEmitter };
      const connectToHost = internals._connectToHost.bind(conn);
      internals._connectToHost = (opts, secure) => {
        connectToHost(opts, secure);
        // 'secure': the handshake is over, before the certificate checks that may fail it; 'secureConnect': they passed.
        for (const event of ['secure', 'secureConnect']) internals._socket?.once(event, () => { handshakeDone = true; });
      };
    }
    const destination = `${endpoint.host}:${endpoint.port}`;
    const server = serverOf(endpoint.address, endpoint.port);
    let settle!: (greeted: boolean) => void;
    const opening = { destination, server, greeted: false, outcome: new Promise<boolean>((resolve) => { settle = resolve; }) };
    const greeting = conn as unknown as { _actionGreeting(str: string): void };
    const actionGreeting = greeting._actionGreeting.bind(conn);
    greeting._actionGreeting = (str) => {
      opening.greeted = str.startsWith('220');
      if (opening.greeted) settle(true);
      actionGreeting(str);
    };
    const greetsAs = recordGreetsAs(conn);
    this.#opening.set(conn, opening);
    await new Promise<void>((resolve, reject) => {
      let settled = false;
      const done = (err?: Error): void => {
        if (settled) return;
        settled = true;
        conn.off('error', done);
        conn.off('end', onEnd);
        if (err) {
          // Whether TLS had started and failed: opportunistic TLS retries such a failure in plaintext. A reply
          // from the server after the handshake (421 to EHLO, say) is the server speaking, not TLS failing.
          const replied = typeof (err as { responseCode?: unknown }).responseCode === 'number';
          const alert = /^ERR_SSL_/.test(String((err as { originalCode?: unknown }).originalCode ?? ''));
          Object.assign(err, { tlsStarted: !replied && (s.secure ? handshakeDone || alert : conn.secure || !!conn.upgrading) });
          conn.close();
          reject(err);
        } else resolve();
      };
      const onEnd = (): void => done(Object.assign(new Error('Connection closed unexpectedly'), { code: 'ECONNECTION', command: 'CONN' }));
      conn.on('error', done);
      conn.on('end', onEnd);
      conn.connect((err) => done(err ?? undefined));
    }).finally(() => {
      this.#opening.delete(conn);
      settle(opening.greeted);
    });
    const pc = new PooledConnection(conn, poolKey(endpoint.host, endpoint.port, s), destination, server, { remote: `${endpoint.host}[${endpoint.address}]:${endpoint.port}`, greetsAs: greetsAs(), tls: tlsInfo(conn) }, deadline);
    let set = this.#open.get(destination);
    if (!set) this.#open.set(destination, (set = new Set()));
    set.add(pc);
    pc.onGone(() => this.#forget(pc));
    if (this.#closed) { pc.close(); throw Object.assign(new Error('delivery is shutting down'), { code: 'ECONNECTION', command: 'API' }); }
    return pc;
  }

  /** Put a connection back after a transaction, or close it. */
  release(pc: PooledConnection, reusable: boolean): void {
    if (!reusable || this.#closed || !pc.alive || pc.messages >= MAX_MESSAGES) {
      this.#letGo(pc, reusable);
      return;
    }
    let list = this.#idle.get(pc.key);
    if (!list) this.#idle.set(pc.key, (list = []));
    list.push(pc);
    pc.idleTimer = setTimeout(() => {
      const l = this.#idle.get(pc.key);
      const i = l?.indexOf(pc) ?? -1;
      if (i >= 0) l!.splice(i, 1);
      if (l && !l.length) this.#idle.delete(pc.key);
      this.#letGo(pc, true);
    }, IDLE_MS);
    pc.idleTimer.unref();
  }

  /** Close a connection after its QUIT, never to be reused (one that leads back to this server). */
  quit(pc: PooledConnection): void {
    this.#letGo(pc, true);
  }

  /** Close a connection and take it out of the counts; the next hop sees it present (presentCount) until it is gone. */
  #letGo(pc: PooledConnection, graceful: boolean): void {
    if (pc.alive) {
      let leaving = this.#leaving.get(pc.destination);
      if (!leaving) this.#leaving.set(pc.destination, (leaving = new Set()));
      leaving.add(pc);
      pc.onGone(() => {
        if (leaving.delete(pc) && !leaving.size && this.#leaving.get(pc.destination) === leaving) this.#leaving.delete(pc.destination);
      });
    }
    pc.close(graceful);
    this.#forget(pc);
  }

  #forget(pc: PooledConnection): void {
    const set = this.#open.get(pc.destination);
    if (set?.delete(pc) && !set.size) this.#open.delete(pc.destination);
    const list = this.#idle.get(pc.key);
    const i = list?.indexOf(pc) ?? -1;
    if (i >= 0) {
      list!.splice(i, 1);
      if (!list!.length) this.#idle.delete(pc.key);
    }
  }

  /**
   * Close everything: idle connections with QUIT, busy ones at once (their transactions fail, the next hop
   * never saw the end of the message), except those awaiting the verdict on a message that went out whole:
   * closed at their release once it comes, or after STOP_VERDICT_WAIT_MS (closeAfterVerdict). Returns how many
   * of those were left waiting.
   */
  close(): number {
    this.#closed = true;
    let waiting = 0;
    for (const conn of this.#opening.keys()) conn.close();
    const idle = new Set([...this.#idle.values()].flat());
    this.#idle.clear();
    for (const set of [...this.#open.values()]) {
      for (const pc of [...set]) {
        if (!idle.has(pc) && pc.awaitingVerdict) {
          pc.closeAfterVerdict(STOP_VERDICT_WAIT_MS);
          waiting++;
          continue;
        }
        pc.close(idle.has(pc));
        this.#forget(pc);
      }
    }
    return waiting;
  }
}

/**
 * Keeps the name the next hop gives itself in its EHLO (or HELO) reply — `250-mx.example.com …`, the second EHLO's
 * after STARTTLS — for the loop check of transaction.ts; the function returned reads it.
 */
function recordGreetsAs(conn: SMTPConnection): () => string | null {
  let name: string | null = null;
  const internals = conn as unknown as Record<'_actionEHLO' | '_actionHELO', (str: string) => void>;
  for (const action of ['_actionEHLO', '_actionHELO'] as const) {
    const original = internals[action].bind(conn);
    internals[action] = (str) => {
      if (str.startsWith('2')) name = /^\d{3}[ -]([^\s]+)/.exec(str)?.[1] ?? null;
      original(str);
    };
  }
  return () => name;
}

function tlsInfo(conn: SMTPConnection): ConnectionInfo['tls'] {
  const socket = conn._socket;
  if (!(socket instanceof TLSSocket)) return null;
  const peer = socket.getPeerCertificate();
  return {
    protocol: socket.getProtocol(),
    cipher: socket.getCipher()?.standardName ?? socket.getCipher()?.name ?? '',
    authorized: socket.authorized,
    peerFingerprint: peer && 'fingerprint256' in peer && peer.fingerprint256 ? peer.fingerprint256 : null,
  };
}

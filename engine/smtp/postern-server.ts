/**
 * One listener: smtp-server's SMTPServer, creating PosternConnections and routing its hooks to the
 * session policy. Each decision is handed to its connection (decide()), whose send() writes it; smtp-server's
 * callbacks get the refusals as errors.
 */
import type { DecisionFacts, DecisionStage } from './decision-log.ts';
import { metrics, refusalCounted } from '../metrics/metrics.ts';
import type { SMTPServer as SMTPServerClass, SMTPServerOptions, SMTPServerSession, SMTPServerAddress, SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerDataStream } from 'smtp-server';
import { createRequire } from 'node:module';
import type net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { PosternConnection } from './postern-connection.ts';
import { certificateInForce } from './certificate-in-force.ts';
import { SessionPolicy, type Decision } from './session-policy.ts';
import { receiveMessage } from './message-intake.ts';
import { SmtpReply } from './reply.ts';
import { reply } from './replies.ts';
import type { Runtime } from './runtime.ts';
import type { ListenerConfig } from '../config/schema.ts';
import type { TrustedIssuers } from '../certificates/index.ts';
import type { ConnectionCounts } from '../cluster/shared-counters.ts';
import { UNTRUSTED_PROXY_REASON, type TrustedProxies } from '../proxy-protocol/trusted-proxies.ts';
import { readProxyHeader } from '../proxy-protocol/read-proxy-header.ts';
import { newSessionId } from './session-id.ts';
import { closedUnansweredCounted, connectRefusalCounted } from './connection-refusals.ts';
import { refuseOnRemovedListener } from './removed-listener.ts';
import { countedAddress } from '../connection-limits/counted-address.ts';
import { OverLimitCounts, type OverLimit } from '../connection-limits/over-limit-recount.ts';
import { clientAddress } from '../addresses/socket-address.ts';
import { closeIdlestFor, closeSlowestTransferFor, makeRoomFor } from './listener-room.ts';
import { handshakeDeadline } from '../timing/handshake-deadline.ts';
import { deferModule } from '../loading/deferred-module.ts';

// smtp-server's CommonJS build, not its ES modules: those import nodemailer's, which import node:http, and an ES
// import of node:http reads every export of it, one of which loads Node's own fetch (undici): ~20 ms of CPU at
// every start of a process (test/app/startup-modules.test.ts). Same code either way (both are built from one source).
// smtp-server requires nodemailer's shared helpers, which require nodemailer's fetch (node:http, node:https, node:zlib,
// its cookie jar: ~20 ms of CPU at each start of a worker) for content given as a URL, which the server never has:
// that require gets a stand-in that loads the real module at its first use (deferred-module.ts).
function smtpServer(): { SMTPServer: typeof SMTPServerClass } {
  const fromSmtpServer = createRequire(createRequire(import.meta.url).resolve('smtp-server'));
  deferModule(fromSmtpServer, '../fetch/index.js', { requirer: 'nodemailer/lib/shared', early: { __esModule: true } });
  return fromSmtpServer('smtp-server') as { SMTPServer: typeof SMTPServerClass };
}
const { SMTPServer } = smtpServer();
type SMTPServer = SMTPServerClass;

/** Everything a listener is built from (see listener-options.ts). */
export interface ListenerSetup {
  name: string;
  options: SMTPServerOptions;
  greetingDelayMs: number;
  maxConnectionsPerIp: number;
  /** limits.ipv6PrefixLength: an IPv6 client's connections are counted by its network (counted-address.ts). */
  ipv6PrefixLength: number;
  tlsHandshakeTimeoutMs: number;
  trust: TrustedIssuers;
  /** `proxyProtocol`: who may send the header, and how long it may take (null: off). */
  proxy: ListenerProxy | null;
  /** When the server certificate expires (Unix seconds); null without TLS. */
  certificateNotAfter: number | null;
}


export interface ListenerProxy { trusted: TrustedProxies; headerTimeoutMs: number }

/**
 * Open connections per client address. The only place they are counted, so that a cluster can swap in
 * counts shared between processes.
 */
export interface ConnectionCounter {
  /**
   * One more connection from `ip` (from its client port `port`); returns how many are open from it now,
   * this one included.
   */
  add(ip: string, port?: number): number;
  /** One of them closed. */
  remove(ip: string): void;
}

/** The counts of this process. */
export class LocalConnectionCounter implements ConnectionCounter {
  readonly #open = new Map<string, number>();

  add(ip: string): number {
    const open = (this.#open.get(ip) ?? 0) + 1;
    this.#open.set(ip, open);
    return open;
  }

  remove(ip: string): void {
    const left = (this.#open.get(ip) ?? 1) - 1;
    if (left > 0) this.#open.set(ip, left); else this.#open.delete(ip);
  }

  /** How many are open from `ip` now. */
  count(ip: string): number { return this.#open.get(ip) ?? 0; }
}

/**
 * The counter of a worker process: the supervisor accepted the connection and counted it over every
 * worker; its count comes with the socket, and its slot is given back when the connection ends (by the
 * session's close too: STARTTLS drops the raw socket's listeners, and with them its 'close').
 */
function handedOverCounter(counts: ConnectionCounts, listener: string): ConnectionCounter {
  return {
    add: (ip, port) => counts.handedOpen?.(`${listener} ${ip}`, port) ?? 1,
    remove: (ip) => counts.releaseHanded?.(`${listener} ${ip}`),
  };
}

const connectionOf = new WeakMap<SMTPServerSession, PosternConnection>();

/**
 * How long after the listener's TLS context was replaced each handshake still gets the current one at its SNI
 * step (see _resolveSNI): at least this, and twice limits.tlsHandshakeTimeoutMs (every handshake, implicit or
 * after STARTTLS, ends within that deadline).
 */
const CONTEXT_SWITCH_WINDOW_MS = 10 * 60_000;

type Done = (err?: Error | null) => void;

export class PosternServer extends SMTPServer {
  readonly runtime: Runtime;
  readonly listenerName: string;
  readonly policy: SessionPolicy;
  greetingDelayMs: number;
  maxConnectionsPerIp: number;
  /** limits.ipv6PrefixLength, fixed until restart (restart-needed.ts): the supervisor counts by the one it started with. */
  readonly ipv6PrefixLength: number;
  tlsHandshakeTimeoutMs: number;
  /** The CAs client certificates are verified against (replaced on certificate rotation). */
  trust: TrustedIssuers;
  connectionCounter: ConnectionCounter = new LocalConnectionCounter();
  /** PROXY protocol on this listener (fixed until restart, like the supervisor's view of it). */
  readonly proxy: ListenerProxy | null;
  /** Sockets accepted over maxConnectionsPerIp (refused with 421 once the session starts). */
  readonly #overIpLimit = new WeakSet<net.Socket>();
  /** Sockets a worker got over the listener's maxConnections, counted over every worker (421 once the session starts). */
  readonly #overListenerLimit = new WeakSet<net.Socket>();
  /** limits.connectionRatePerIp decided before the handshake of an implicit-TLS socket (see #rateFirst): null, allowed. */
  readonly #rateDecided = new WeakMap<net.Socket, SmtpReply | null>();
  /** The CA list when an implicit-TLS socket's handshake began (ConnectionState.handshakeTrust), by its TLS socket. */
  readonly #handshakeTrust = new WeakMap<net.Socket, TrustedIssuers>();
  /** The client a PROXY header named, by the raw socket it came on. */
  readonly #proxiedClient = new WeakMap<net.Socket, string>();
  /** Sockets a worker accepted itself (not handed over with a slot): counted by round trip, as proxied ones. */
  readonly #ownAccepted = new WeakSet<net.Socket>();
  /** Uncounts an accepted socket (once), by the socket, raw or TLS, its connection is built on. */
  readonly #uncount = new WeakMap<net.Socket, () => void>();
  /** Sockets counted over maxConnectionsPerIp, recounted as their earlier connections close (see onConnect). */
  readonly #overCount = new WeakMap<net.Socket, OverLimit>();
  /**
   * Each socket's address as counted (countedAddress: an IPv6 client's network), and its connections then, itself
   * included (over every worker under postern serve): for listener-room.ts, which must not parse every held
   * connection's address again for each client that finds the listener full.
   */
  readonly #countedAtAccept = new WeakMap<net.Socket, { address: string; open: number }>();
  readonly #overLimit = new OverLimitCounts();
  /** The order in which sockets were counted. */
  #serial = 0;

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
    this.ipv6PrefixLength = setup.ipv6PrefixLength;
    this.tlsHandshakeTimeoutMs = setup.tlsHandshakeTimeoutMs;
    this.trust = setup.trust;
    certificateInForce(setup);
    this.proxy = setup.proxy;
    // A worker process counts nothing itself: the supervisor counted the connection as it handed it over.
    if (runtime.connections) this.connectionCounter = handedOverCounter(runtime.connections, this.listenerName);
  }

  /**
   * Every accepted socket counts against its address from here to its close, TLS handshake included: a
   * client that opens connections and never starts the handshake must not take the listener's slots.
   * One over the limit gets 421 when its session starts. On implicit TLS that needs a handshake first, so
   * only as many again are let through to read their 421 (each within tlsHandshakeTimeoutMs); beyond
   * twice the limit a connection is closed at once, before TLS.
   */
  override _acceptSocket(socket: net.Socket, handshake: boolean): (() => void) | false {
    if (this.proxy) {
      // Behind a load balancer: only it may connect; the connection is counted once its header names the client.
      if (this.proxy.trusted.has(socket.remoteAddress)) return super._acceptSocket(socket, handshake);
      const peer = clientAddress(socket);
      this.runtime.logger.info({ listener: this.listenerName, ...closedUnanswered('PROXY', peer, UNTRUSTED_PROXY_REASON), peer },
        'PROXY protocol: connection from an untrusted address closed');
      closedUnansweredCounted(this.listenerName, 'untrusted-proxy');
      socket.on('error', () => undefined);
      socket.destroy();
      return false;
    }
    // A worker's own accept: its slot is taken before the session starts (_handleProxy), by round trip.
    if (this.#ownAccepted.has(socket)) return super._acceptSocket(socket, handshake);
    const ip = countedAddress(clientAddress(socket), this.ipv6PrefixLength);
    const total = this.runtime.connections?.handedTotal?.(`${this.listenerName} ${ip}`, socket.remotePort);
    if (total !== undefined && total > this.#maxClients()) this.#overListenerLimit.add(socket);
    if (!this.#count(socket, ip, this.connectionCounter.add(ip, socket.remotePort), handshake, () => this.connectionCounter.remove(ip))) return false;
    return super._acceptSocket(socket, handshake);
  }

  /**
   * Count an accepted socket as one of `open` connections from `ip` until it closes (`remove` gives its slot
   * back); false when it was closed at once for being far over the limit.
   */
  #count(socket: net.Socket, ip: string, open: number, handshake: boolean, remove: () => void, recount = true): boolean {
    let counted = true;
    const serial = ++this.#serial;
    let over: OverLimit | undefined;
    const uncount = (): void => {
      if (counted) {
        remove();
        this.#overLimit.closed(ip, serial);
      }
      counted = false;
      if (over) this.#overLimit.forget(over);
    };
    // On the raw socket until the session starts; STARTTLS drops the raw socket's listeners, so the
    // session's close uncounts too.
    socket.once('close', uncount);
    this.#uncount.set(socket, uncount);
    this.#countedAtAccept.set(socket, { address: ip, open });
    if (open > this.maxConnectionsPerIp) {
      if (handshake && open > 2 * this.maxConnectionsPerIp) {
        this.runtime.logger.info({ listener: this.listenerName, ...closedUnanswered('CONNECT', ip, 'limits.maxConnectionsPerIp: over twice the limit (closed before TLS)'), ip, open },
          'too many connections from this address, closed before TLS');
        closedUnansweredCounted(this.listenerName, 'per-ip-limit');
        socket.on('error', () => undefined);
        socket.destroy();
        return false;
      }
      this.#overIpLimit.add(socket);
      if (recount) this.#overCount.set(socket, over = this.#overLimit.add(ip, serial, open));
    }
    return true;
  }

  /**
   * smtp-server's hook for the PROXY header (its own reads v1 only): on a proxyProtocol listener, read v1
   * or v2, then count the connection against the client it names, and give that address to the session
   * (smtp-server's socket options), so scripts, limits, logs and Received all see the client.
   */
  override _handleProxy(socket: net.Socket, callback: Parameters<SMTPServer['_handleProxy']>[1]): void {
    if ((this.options as { secure?: boolean }).secure) callback = this.#rateFirst(socket, callback);
    const proxy = this.proxy;
    if (!proxy && this.#ownAccepted.has(socket)) {
      // Accepted by this worker itself: the client's slot from the supervisor's count over every worker.
      const handshake = !!(this.options as { secure?: boolean }).secure;
      this.#countOwn(socket, countedAddress(clientAddress(socket), this.ipv6PrefixLength), handshake).then(
        (counted) => (counted ? callback(null, { id: newSessionId() }) : callback(new Error('closed before the session'))),
        (err: Error) => { socket.destroy(); callback(err); },
      );
      return;
    }
    if (!proxy) {
      // smtp-server's own path without a header (Postern never sets its useProxy nor ignoredHosts), with a cheaper id.
      const options = this.options as { useProxy?: unknown; ignoredHosts?: unknown };
      if (options.useProxy || options.ignoredHosts) return super._handleProxy(socket, callback);
      const id = newSessionId();
      setImmediate(() => callback(null, { id }));
      return;
    }
    const handshake = !!(this.options as { secure?: boolean }).secure;
    const balancer = clientAddress(socket);
    const refuse = (err: Error): void => {
      this.runtime.logger.info({ listener: this.listenerName, ...closedUnanswered('PROXY', balancer, err.message), peer: balancer },
        'PROXY protocol: connection closed');
      closedUnansweredCounted(this.listenerName, 'proxy-header');
      socket.on('error', () => undefined);
      socket.destroy();
      callback(err);
    };
    readProxyHeader(socket, proxy.headerTimeoutMs).then(async (header) => {
      const unmapped = (address: string): string => address.replace(/^::ffff:(?=\d+\.)/i, '');
      const client = header.command === 'proxy'
        ? { address: unmapped(header.source.address), port: header.source.port }
        : { address: balancer, port: socket.remotePort ?? 0 };
      if (!await this.#countProxied(socket, countedAddress(client.address, this.ipv6PrefixLength), client.port, handshake)) return callback(new Error('closed before the session'));
      this.#proxiedClient.set(socket, client.address);
      // The session id in smtp-server's form (its own _handleProxy is not called); fromBalancer: PosternConnection's.
      // What the client connected to is the balancer's address the header names (scripts' localAddress/localPort, as Postfix's).
      const reached = header.command === 'proxy' ? { localAddress: unmapped(header.destination.address), localPort: header.destination.port } : {};
      const options = { id: newSessionId(), remoteAddress: client.address, remotePort: client.port, ...reached, fromBalancer: header.command === 'local' };
      callback(null, options);
    }).catch(refuse);
  }

  /**
   * Implicit TLS: the connection is counted against limits.connectionRatePerIp before its handshake, once the
   * client is known (after the PROXY header, and the per-IP count). One over the rate is closed at once, without
   * TLS and without a reply: counted only after the handshake, as on a plain listener, it cost the server a full
   * handshake each (its certificate chain verified too) to send a 421, so a client reconnecting in a loop had
   * the CPU the limit is there to keep. A store that cannot answer is refused as before: with its 421 after TLS.
   */
  #rateFirst(socket: net.Socket, callback: Parameters<SMTPServer['_handleProxy']>[1]): Parameters<SMTPServer['_handleProxy']>[1] {
    return (err, info) => {
      const generation = this.runtime.generation;
      const listener = this.#listenerInForce();
      // Over a connection limit it gets that 421 (after TLS, a bounded number): refused connections are not counted.
      // Nor a trusted balancer's own connections (its health checks: session-policy.ts #connectionRate).
      if (err || !listener?.limits.connectionRatePerIp || this.#overIpLimit.has(socket) || this.#overListenerLimit.has(socket)
        || (info as { fromBalancer?: boolean } | undefined)?.fromBalancer) return callback(err, info);
      const client = (info as { remoteAddress?: string } | undefined)?.remoteAddress ?? clientAddress(socket);
      const ip = countedAddress(client, listener.limits.ipv6PrefixLength);
      this.policy.countConnection(generation, listener, ip, client).then((counted) => {
        if (socket.destroyed) return callback(new Error('closed before the session'));
        if (!counted?.overRate) {
          this.#rateDecided.set(socket, counted?.refusal ?? null);
          return callback(null, info);
        }
        this.runtime.logger.info({ listener: this.listenerName, ...closedUnanswered('CONNECT', client, 'limits.connectionRatePerIp: over the rate (closed before TLS)'), ip },
          'too many connections from this address within limits.connectionRatePerIp, closed before TLS');
        closedUnansweredCounted(this.listenerName, 'connection-rate');
        socket.on('error', () => undefined);
        socket.destroy();
        callback(new Error('closed before the session'));
      }, (e: Error) => { socket.destroy(); callback(e); });
    };
  }

  /**
   * A proxied connection's slot: in this process, or (a worker) from the supervisor's count over every worker,
   * taken whatever the count as for a connection it hands over, so that the real count decides as everywhere
   * else: over the limit it reads its 421 (on implicit TLS after the handshake, up to twice the limit; beyond,
   * it is closed before TLS). Asked for a slot under the limit instead, the supervisor said only no: a client
   * one over its limit was closed before TLS without a reply, logged with a made-up count of 2 × limit + 1.
   */
  async #countProxied(socket: net.Socket, ip: string, port: number, handshake: boolean): Promise<boolean> {
    const shared = this.runtime.connections;
    if (!shared) return this.#count(socket, ip, this.connectionCounter.add(ip, port), handshake, () => this.connectionCounter.remove(ip));
    if (shared.take) return this.#countOwn(socket, ip, handshake);
    const key = `${this.listenerName} ${ip}`;
    const limit = this.maxConnectionsPerIp;
    const { ok: taken, total } = await shared.acquire(key, ip, limit, port);
    const release = (): void => { if (taken) shared.release(key); };
    if (socket.destroyed) { // gone while asking: no 'close' will come to give the slot back
      release();
      return false;
    }
    // maxConnections is the listener's over every worker, as for a connection the supervisor counted.
    if (taken && total !== undefined && total > this.#maxClients()) this.#overListenerLimit.add(socket);
    // Over the limit no slot was taken (a counter that cannot take whatever the count): on implicit TLS closed before the handshake, else 421 at connect.
    return this.#count(socket, ip, taken ? 1 : handshake ? 2 * limit + 1 : limit + 1, handshake, release, false);
  }

  /**
   * The slot of a connection this worker accepted itself (or of the client a PROXY header named), from the
   * supervisor's count over every worker, taken whatever the count as for a connection the supervisor hands over: over the limit it reads its 421 (on
   * implicit TLS after the handshake, up to twice the limit; beyond, it is closed before TLS).
   */
  async #countOwn(socket: net.Socket, ip: string, handshake: boolean): Promise<boolean> {
    const shared = this.runtime.connections!;
    const key = `${this.listenerName} ${ip}`;
    const { open, total } = await shared.take!(key, ip);
    const release = (): void => shared.release(key);
    if (socket.destroyed) { // gone while asking: no 'close' will come to give the slot back
      release();
      return false;
    }
    if (total !== undefined && total > this.#maxClients()) this.#overListenerLimit.add(socket);
    return this.#count(socket, ip, open, handshake, release);
  }

  /**
   * A socket this worker accepted on the listener's socket the supervisor holds (workerChoice: fill): it
   * counts against its client by round trip to the supervisor before the session starts, as a proxied one.
   */
  acceptOwn(socket: net.Socket): void {
    this.#ownAccepted.add(socket);
    this.server.emit('connection', socket);
  }

  /** Over limits.maxConnections: one of this process's connections closed for `newcomer`, when fair (listener-room.ts). */
  makeRoomFor(newcomer: PosternConnection): boolean {
    return makeRoomFor(newcomer, (this as unknown as { connections: Set<PosternConnection> }).connections);
  }

  /** Over limits.maxConnections, nobody closed by makeRoomFor: this process's slowest message transfer below limits.minDataRate (listener-room.ts). */
  closeSlowestTransferFor(newcomer: PosternConnection): boolean {
    return closeSlowestTransferFor(newcomer, (this as unknown as { connections: Set<PosternConnection> }).connections, performance.now());
  }

  /** Over limits.maxConnections, nobody closed by the rules above: this process's connection idle longest, if idle at least limits.idleWhenFullMs (listener-room.ts). */
  closeIdlestFor(newcomer: PosternConnection): boolean {
    return closeIdlestFor(newcomer, (this as unknown as { connections: Set<PosternConnection> }).connections, performance.now());
  }

  /** limits.maxConnections (smtp-server's maxClients). */
  #maxClients(): number {
    return (this.options as { maxClients?: number }).maxClients ?? Infinity;
  }

  /**
   * The SNI step of each handshake. smtp-server answers the listener's own context ('*'), which Node then
   * installs on the connection again (certificate, key and CA list: about 13 µs per handshake, measured). Postern
   * sets neither SNICallback nor sniOptions, so '*' is the context the connection was created with: answering
   * none keeps it. The name the client asked for still reaches the session (tls.sni). For a while after the
   * context was replaced (certificate, CA or CRL reload), the current one is answered as before: a handshake that
   * began on the old context is verified with the new CA and CRL files.
   */
  override _resolveSNI(servername: string, cb: Parameters<SMTPServer['_resolveSNI']>[1]): void {
    const options = this.options as { SNICallback?: unknown; sniOptions?: unknown };
    if (options.SNICallback || options.sniOptions || this.#contextRecentlyReplaced()) return super._resolveSNI(servername, cb);
    cb(null);
  }

  /**
   * smtp-server's, all or nothing: it merges `options` into the listener's options and makes a new context map one
   * context at a time, so an option OpenSSL refused midway (an SNI name's key, say) left the merged options and a map
   * without the default context, and every later handshake failed. Throws what OpenSSL refused, the listener as it was.
   */
  override updateSecureContext(options: Parameters<SMTPServer['updateSecureContext']>[0]): void {
    const before = { ...this.options };
    const contexts = this.secureContext;
    try {
      super.updateSecureContext(options);
    } catch (err) {
      const merged = this.options as unknown as Record<string, unknown>;
      for (const key of Object.keys(merged)) if (!(key in before)) delete merged[key];
      Object.assign(merged, before);
      this.secureContext = contexts;
      throw err;
    }
  }

  /** The listener's context when a handshake last looked, and when it was found replaced. */
  #seenContext: unknown = this.secureContext.get('*');
  #contextReplacedAt = -Infinity;

  #contextRecentlyReplaced(): boolean {
    const current = this.secureContext.get('*');
    const now = performance.now();
    if (current !== this.#seenContext) {
      this.#seenContext = current;
      this.#contextReplacedAt = now;
    }
    return now - this.#contextReplacedAt < Math.max(CONTEXT_SWITCH_WINDOW_MS, 2 * this.tlsHandshakeTimeoutMs);
  }

  /** smtp-server gives the handshake the idle timeout (minutes); ours is short. */
  override _upgrade(socket: net.Socket, callback: Parameters<SMTPServer['_upgrade']>[1]): void {
    // A failed handshake is reported with its client (the one the PROXY header named, not the balancer):
    // smtp-server names it only in err.meta, and the error then read as the listener's own (error level,
    // stack trace), for every client that sent no ClientHello in time or a broken one.
    const client = this.#proxiedClient.get(socket) ?? clientAddress(socket);
    super._upgrade(socket, (err, tlsSocket) => {
      if (err) Object.assign(err, { remoteAddress: client, tlsHandshake: true });
      callback(err, tlsSocket);
    });
    const tlsSocket = this._pendingSockets.get(socket);
    if (!tlsSocket || tlsSocket === socket) return;
    // smtp-server's handshake timeout is the TLS socket's idle timer, which runs before the sockets are read: ours
    // instead (handshake-deadline.ts), ending the handshake through smtp-server's own 'timeout' listener.
    tlsSocket.setTimeout(0);
    const cancel = handshakeDeadline(socket, this.tlsHandshakeTimeoutMs, () => { if (!tlsSocket.destroyed) tlsSocket.emit('timeout'); });
    tlsSocket.once('secure', cancel);
    tlsSocket.once('close', cancel);
    this.#handshakeTrust.set(tlsSocket, this.trust);
    // connect() gets the TLS socket.
    if (this.#overIpLimit.has(socket)) this.#overIpLimit.add(tlsSocket);
    if (this.#overListenerLimit.has(socket)) this.#overListenerLimit.add(tlsSocket);
    if (this.#rateDecided.has(socket)) this.#rateDecided.set(tlsSocket, this.#rateDecided.get(socket)!);
    const over = this.#overCount.get(socket);
    if (over) this.#overCount.set(tlsSocket, over);
    const uncount = this.#uncount.get(socket);
    if (uncount) this.#uncount.set(tlsSocket, uncount);
    const counted = this.#countedAtAccept.get(socket);
    if (counted) this.#countedAtAccept.set(tlsSocket, counted);
  }

  /** This listener in the configuration in force: undefined once a reload removed it (its port stays bound until a restart). */
  #listenerInForce(): ListenerConfig | undefined {
    return this.runtime.generation.config.listeners.find((l) => l.name === this.listenerName);
  }

  /** smtp-server's connect(), creating our connection class. */
  override connect(socket: net.Socket, socketOptions?: Record<string, unknown>): void {
    const self = this as unknown as { connections: Set<unknown>; _onError(e: Error): void; _onClientConnect(d: unknown): void };
    // A listener a reload removed has no configuration to run a session under (a session needs its limits,
    // scripts and TLS): what the administrator asked for is that it take no more mail. Its socket's close uncounts it.
    if (!this.#listenerInForce()) return this.#refuseRemoved(socket);
    const connection = new PosternConnection(this, socket, socketOptions);
    connection.state.overIpLimit = this.#overIpLimit.has(socket);
    connection.state.ipCountNow = this.#overCount.get(socket) ?? null;
    connection.state.overListenerLimit = this.#overListenerLimit.has(socket);
    connection.state.connectionRateDecided = this.#rateDecided.get(socket);
    connection.state.uncountIp = this.#uncount.get(socket) ?? null;
    const counted = this.#countedAtAccept.get(socket);
    connection.state.countedAddress = counted?.address ?? null;
    connection.state.addressOpenAtAccept = counted?.open ?? 0;
    connection.state.handshakeTrust = this.#handshakeTrust.get(socket) ?? null;
    // Counted as it starts: a connection refused before onConnect (too many clients, talking before the greeting)
    // is one too, as postern_smtp_connections_refused_total counts it (refused never more than taken).
    metrics.connections.inc({ listener: connection.state.listener.name });
    connectionOf.set(connection.session, connection);
    self.connections.add(connection);
    connection.on('error', (err: Error) => self._onError(err));
    connection.on('connect', (data: unknown) => self._onClientConnect(data));
    connection.init();
  }

  #refuseRemoved(socket: net.Socket): void {
    refuseOnRemovedListener(this.runtime.logger, this.listenerName, socket);
  }

  #conn(session: SMTPServerSession): PosternConnection {
    const conn = connectionOf.get(session);
    if (!conn) throw new Error('session without connection');
    return conn;
  }

  override onConnect(session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    if (conn.state.overIpLimit) {
      const over = conn.state.ipCountNow;
      if (!over) return this.#refuseOverIpLimit(conn, callback);
      // The client's previous connection may have ended in the very turn this one was counted, its 'close'
      // not run yet (Node runs close callbacks last in a turn, a socket's shutdown callback may wait a turn
      // more): a client reconnecting at once at its limit would be refused for a connection it no longer
      // has. Decided two turns later, with the connections counted before this one that closed since.
      return void setImmediate(() => setImmediate(() => {
        this.#overLimit.forget(over);
        if (over.open > this.maxConnectionsPerIp || conn.state.closed) return this.#refuseOverIpLimit(conn, callback);
        conn.state.overIpLimit = false;
        settle('CONNECT', this.policy.connect(conn), callback, conn, this.policy);
      }));
    }
    settle('CONNECT', this.policy.connect(conn), callback, conn, this.policy);
  }

  #refuseOverIpLimit(conn: PosternConnection, callback: Done): void {
    callback(conn.decide('CONNECT', reply('tooManyConnectionsFromAddress')));
  }

  override onSecure(socket: TLSSocket, session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    try {
      callback(conn.decide('STARTTLS', this.policy.starttls(conn, socket)));
    } catch (err) {
      callback(conn.decide('STARTTLS', this.policy.internalError(conn, err)));
    }
  }

  override onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, callback: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void): void {
    const conn = this.#conn(session);
    this.policy.onAuth(conn, auth).then(
      (result) => (result instanceof SmtpReply ? callback(conn.decide('AUTH', result)) : callback(null, { user: result })),
      (err: unknown) => callback(conn.decide('AUTH', this.policy.internalError(conn, err))),
    );
  }

  override onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    let decision: Decision;
    try {
      decision = this.policy.mailFrom(conn, address, session);
    } catch (err) {
      decision = Promise.reject(err); // fails closed in settle(), as a rejection does
    }
    settle('MAIL', decision, callback, conn, this.policy, mailFacts, address, session);
  }

  override onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, callback: Done): void {
    const conn = this.#conn(session);
    let decision: Decision;
    try {
      decision = this.policy.rcptTo(conn, address, session);
    } catch (err) {
      decision = Promise.reject(err);
    }
    settle('RCPT', decision, callback, conn, this.policy, rcptFacts, address, session);
  }

  override onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback: (err?: Error | null, message?: string) => void): void {
    const conn = this.#conn(session);
    conn.timeData(stream);
    receiveMessage(conn, stream, session, this.runtime, this.policy).then(
      (queued) => {
        conn.decide('END-OF-MESSAGE', queued);
        callback(null, queued.message);
      },
      (err: Error) => callback(err instanceof SmtpReply ? conn.decide('END-OF-MESSAGE', err, dataFacts(session)) : err),
    );
  }

  override onClose(session: SMTPServerSession): void {
    const conn = connectionOf.get(session);
    if (!conn) return;
    conn.stopTimers();
    conn.state.uncountIp?.();
    conn.state.closed = true;
    conn.state.releaseSlot?.();
    conn.state.generation.release();
    if (this.#drained && this.connections.size === 0) this.#drained();
  }

  /** Set while close() waits for the sessions of a worker's server to end. */
  #drained: (() => void) | null = null;

  /**
   * Stop. smtp-server's close() stops accepting and lets the sessions of a listening server finish, up to
   * closeTimeout (then 421 and closed). A worker's server never listened (the supervisor hands it its
   * sockets), and net.Server.close() then calls back at once: the worker would exit in the middle of its
   * transactions. Its sessions get the same wait here.
   */
  override close(callback?: () => void): void {
    if (this.server.listening) return super.close(callback);
    super.close(); // from now on smtp-server answers each new command 421 4.4.2 Server shutting down
    if (this.connections.size === 0) return void callback?.();
    const graceMs = (this.options as { closeTimeout?: number }).closeTimeout ?? 30_000;
    this.runtime.logger.info({ listener: this.listenerName, sessions: this.connections.size, graceMs },
      'stopping: sessions in progress may finish their transaction');
    const finish = (): void => {
      this.#drained = null;
      clearTimeout(timer);
      callback?.();
    };
    const timer = setTimeout(() => {
      for (const conn of this.connections as Set<PosternConnection>) conn.closeForShutdown();
      finish();
    }, graceMs);
    this.#drained = finish;
  }
}

export { clientAddress };

/**
 * The decision fields (decision-log.ts) of a connection closed without a reply — no SMTP session to answer
 * in — so that `jq 'select(.decision)'` finds these refusals too.
 */
function closedUnanswered(stage: string, client: string, reason: string): Record<string, unknown> {
  return { decision: 'reject', stage, client, reason, reply: null };
}

/** The facts of an end-of-data refusal's log line. */
function dataFacts(session: SMTPServerSession): DecisionFacts {
  return { from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '', to: session.envelope.rcptTo.map((r) => r.address) };
}

/** The facts of a MAIL FROM decision's log line. */
function mailFacts(address: SMTPServerAddress): DecisionFacts {
  return { from: address.address };
}

/** The facts of a RCPT TO decision's log line (taken when it is decided: the transaction id is the one then). */
function rcptFacts(address: SMTPServerAddress, session: SMTPServerSession, conn: PosternConnection): DecisionFacts {
  return { from: session.envelope.mailFrom ? session.envelope.mailFrom.address : undefined, to: address.address, id: conn.state.transactionId };
}

/**
 * Hand a policy decision to its connection and smtp-server's callback, at once when it is known already;
 * unexpected errors fail closed. The log line's facts are built only for a refusal (the only reply whose
 * line uses them).
 */
function settle(
  stage: DecisionStage, decision: Decision, callback: Done, conn: PosternConnection, policy: SessionPolicy,
  facts?: (address: SMTPServerAddress, session: SMTPServerSession, conn: PosternConnection) => DecisionFacts,
  address?: SMTPServerAddress, session?: SMTPServerSession,
): void {
  if (!(decision instanceof Promise)) {
    callback(conn.decide(stage, decision, decision?.refuses && facts ? facts(address!, session!, conn) : undefined));
    return;
  }
  decision.then(
    (decided) => callback(conn.decide(stage, decided, decided?.refuses && facts ? facts(address!, session!, conn) : undefined)),
    (err: unknown) => callback(conn.decide(stage, policy.internalError(conn, err), facts ? facts(address!, session!, conn) : undefined)),
  );
}

/**
 * One SMTP connection: smtp-server's SMTPConnection, extended where Postern differs — a per-listener
 * greeting delay, per-connection AUTH offers (EXTERNAL only after TLS with a usable certificate), AUTH
 * EXTERNAL itself, the HELO hook, and the one place replies reach the wire: send().
 */
import { clientName, logRefusal, LOGGED_RECIPIENTS, smtpServerReason, type DecisionFacts, type DecisionStage } from './decision-log.ts';
import { metrics, refusalCounted } from '../metrics/metrics.ts';
import { connectRefusalCounted } from './connection-refusals.ts';
import type { SMTPConnection as SMTPConnectionClass } from 'smtp-server/lib/smtp-connection.js';
import type saslModule from 'smtp-server/lib/sasl.js';
import { createRequire } from 'node:module';
import type { SMTPServer, SMTPServerAddress } from 'smtp-server';
import net from 'node:net';
import { isAscii, isUtf8 } from 'node:buffer';
import { ConnectionState } from './connection-state.ts';
import { asciiReplyText, ENHANCED_CODE_PREFIX, SmtpReply } from './reply.ts';
import { reply } from './replies.ts';
import { parseExternalResponse } from './sasl-external.ts';
import { isSaslBase64 } from './sasl-base64.ts';
import { batchReply } from './reply-batch.ts';
import { catalogueReplyFor, refusalContext, type GreetingWait } from './smtp-server-replies.ts';
import { RecipientCount, refuseTooMany } from './recipient-count.ts';
import { parameterControlRefusal, unnamedParameterRefusal } from './parameter-controls.ts';
import { withWrittenPath, writtenPath } from './written-path.ts';
import { useMessageStream } from './message-stream.ts';
import { continueInOrder } from './parser-continue.ts';
import { PipelinedInput } from './pipelined-input.ts';
import { LineDeadline } from './line-deadline.ts';
import type { SmtpClient } from './smtp-client.ts';
import { spoolCannotConfirm, type Runtime } from './runtime.ts';
import type { SessionPolicy } from './session-policy.ts';
import type { TrustedIssuers } from '../certificates/index.ts';
import { canonicalAddress, declaresUtf8, preparedPath } from './envelope-path.ts';
import { nextProgress, type Standing } from '../connection-limits/closing-order.ts';
import { countedAddress } from '../connection-limits/counted-address.ts';
import type { IdleJudgement, RoomMember } from './listener-room.ts';
import { TransferRate, type TransferJudgement } from './transfer-rate.ts';
import { handshakeDeadline } from '../timing/handshake-deadline.ts';

// smtp-server's CommonJS build, as engine/smtp/postern-server.ts loads it (why there): one copy of its modules.
const requireCjs = createRequire(import.meta.url);
const { SMTPConnection } = requireCjs('smtp-server/lib/smtp-connection') as { SMTPConnection: typeof SMTPConnectionClass };
type SMTPConnection = SMTPConnectionClass;
const sasl = requireCjs('smtp-server/lib/sasl') as typeof saslModule;

type Callback = () => void;

/** Socket errors that only say the client went away (smtp-server's own list). */
const CLIENT_WENT_AWAY = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * Commands that move no mail forward: Postfix's junk commands (NOOP, RSET, VRFY), with HELP, EXPN, and HELO
 * and EHLO (each runs the helo script; a client needs two, around STARTTLS).
 */
/** EXTERNAL's refusals of its response (sasl-external.ts), as PLAIN and LOGIN answer the same. */
const EXTERNAL_REFUSALS = { cancelled: 'authAborted', notBase64: 'authBadBase64', malformed: 'authMalformed' } as const;

const JUNK_COMMANDS = new Set(['NOOP', 'RSET', 'VRFY', 'HELP', 'EXPN', 'HELO', 'EHLO']);

/** Commands a refusal of smtp-server's own is logged under; any other verb is UNKNOWN (log and metric labels stay few). */
const SMTP_VERBS = new Set([...JUNK_COMMANDS, 'MAIL', 'RCPT', 'DATA', 'BDAT', 'QUIT', 'AUTH', 'STARTTLS', 'LHLO', 'XCLIENT', 'XFORWARD']);

/**
 * The known four-letter verbs by their bytes, folded to lower case (`| 0x20` on each byte: a letter's two cases
 * meet, and no other byte becomes a lower-case letter), so MAIL, RCPT and DATA need no string built per command.
 */
const FOUR_LETTER_VERBS = new Map([...SMTP_VERBS].filter((v) => v.length === 4).map((v) => [Buffer.from(v.toLowerCase(), 'latin1').readUInt32BE(0), v]));

/** A command's verb, upper case: its first word, at most 8 characters. */
function commandVerb(command: Buffer): string {
  if (command.length === 4 || (command.length > 4 && command[4] === 0x20)) {
    const known = FOUR_LETTER_VERBS.get((command.readUInt32BE(0) | 0x20202020) >>> 0);
    if (known !== undefined) return known;
  }
  const space = command.indexOf(0x20);
  return command.toString('latin1', 0, space < 0 ? Math.min(command.length, 8) : Math.min(space, 8)).toUpperCase();
}

/** A command with anything but spaces after its verb (`DATA x`; `DATA ` is a bare DATA, as in Postfix). */
function hasArgument(command: Buffer): boolean {
  return /^\S+\s+\S/.test(command.toString('latin1').trim());
}

/**
 * RCPTs over maxRecipients (each answered 452 4.5.3) tolerated before each counts as a refusal: a client may
 * send all its recipients at once and the rest in a later transaction (Postfix smtpd_recipient_overshoot_limit).
 */
const RECIPIENT_OVERSHOOT = 1000;
/**
 * limits.idleWhenFullMs: accepted commands between two accepted messages that count as activity, beyond a whole
 * transaction's (maxRecipients RCPTs): its MAIL, DATA, a STARTTLS, an AUTH's steps, a few transactions given up.
 */
const ACTIVITY_BEYOND_RECIPIENTS = 16;

/**
 * Whether the `n`th RCPT over maxRecipients (since the last accepted message) gets its decision line: within
 * RECIPIENT_OVERSHOOT only the 1st, 2nd, 4th, 8th … (the line says which), beyond it each (a refusal, so at most
 * limits.maxErrors). A line each let one client write a thousand lines (~1.5 MB) per transaction, 50 times the
 * bytes of its commands, again after each message accepted; Postfix logs none of them.
 */
function loggedOvershoot(n: number): boolean {
  return n > RECIPIENT_OVERSHOOT || (n & (n - 1)) === 0;
}

const socketReadyState = Object.getOwnPropertyDescriptor(net.Socket.prototype, 'readyState')!.get!;

/**
 * Keep our side of `socket` open after the client's FIN, for the replies still due (see _createParser). smtp-server
 * writes a reply only to a socket whose readyState is 'open', and a socket the client half-closed is 'writeOnly':
 * to smtp-server, that is open.
 */
function keepAnsweringAfterFin(socket: net.Socket): void {
  socket.allowHalfOpen = true;
  Object.defineProperty(socket, 'readyState', { configurable: true, get: openWhileWriteOnly });
}

/**
 * One getter for every socket, not a closure per socket: V8 gives objects that gained the same accessor the
 * same hidden class, while a different getter each time turned every socket after the first into a
 * dictionary-mode object, which made each of its property reads slower (one profile charged node:net's
 * readyState getter ~3 µs per message).
 */
function openWhileWriteOnly(this: net.Socket): string {
  const state = socketReadyState.call(this) as string;
  return state === 'writeOnly' ? 'open' : state;
}

/** What a connection uses of its listener (PosternServer). */
export interface ListenerHost {
  readonly runtime: Runtime;
  readonly listenerName: string;
  readonly policy: SessionPolicy;
  readonly greetingDelayMs: number;
  readonly tlsHandshakeTimeoutMs: number;
  readonly trust: TrustedIssuers;
  /** limits.ipv6PrefixLength, fixed until restart: how a client's address is counted. */
  readonly ipv6PrefixLength: number;
  /** Over limits.maxConnections: close another client's connection for this one (listener-room.ts); false if none may be. */
  makeRoomFor(connection: PosternConnection): boolean;
  /** Over limits.maxConnections, nobody to close by makeRoomFor: close the slowest message transfer below limits.minDataRate. */
  closeSlowestTransferFor(connection: PosternConnection): boolean;
  /** Over limits.maxConnections, nobody closed by either: close the connection idle longest, if at least limits.idleWhenFullMs. */
  closeIdlestFor(connection: PosternConnection): boolean;
}

/** A reply Postern decided, waiting for the send() that writes it. */
interface DecidedReply { reply: SmtpReply; stage: DecisionStage; facts: DecisionFacts | undefined }

/** How long a client waits for our greeting (RFC 5321 §4.5.3.2.1): the connect phase's bound on the idle timeout's pause. */
const GREETING_WAIT_MS = 5 * 60_000;
/**
 * How often a message deadline that passed looks again while the parser, not getting on (a spool that is behind), still
 * holds bytes read before the deadline (#dataTooSlow): not each turn, which would spin a CPU for as long.
 */
const CATCH_UP_LOOK_MS = 20;

export class PosternConnection extends SMTPConnection implements SmtpClient, RoomMember {
  readonly state: ConnectionState;
  /**
   * The next reply: what Postern decided about the command being answered, written by the next send()
   * in place of smtp-server's own reply (smtp-server's callbacks cannot carry a 2xx text or "close after
   * this reply"). Set by decide() right before the reply is sent.
   */
  #nextReply: DecidedReply | null = null;
  /** The command being answered, for smtp-server's own refusals (CONNECT before the first). */
  #stage: DecisionStage = 'CONNECT';
  /**
   * The MAIL or RCPT command being answered, until its reply: the address of smtp-server's own refusal of it (530
   * before AUTH, 452 over maxRecipients), as Postfix logs it. Not after its reply (an idle timeout that follows is
   * about the transaction, not that address).
   */
  #addressCommand: Buffer | null = null;
  /** Each line the client sends must be complete within limits.socketTimeoutMs (see line-deadline.ts). */
  readonly #lineDeadline: LineDeadline;

  constructor(server: ListenerHost, socket: net.Socket, options?: Record<string, unknown>) {
    super(server as unknown as SMTPServer, socket, options);
    const generation = server.runtime.generation.acquire();
    this.state = new ConnectionState(generation, generation.listener(server.listenerName));
    this.state.fromBalancer = options?.fromBalancer === true; // set by the server's _handleProxy
    this.#lineDeadline = new LineDeadline(this.state.listener.limits.socketTimeoutMs, () => this.#lineTooSlow());
    setImmediate(() => setImmediate(() => { this.#fresh = false; }));
  }

  /** For listener-room.ts: when it last sent a command (a sequence number), and whether it sent any. */
  #progress = nextProgress();
  #advanced = false;
  /** Accepted in this turn of the event loop or the next: what it sent with its connect is not read yet. */
  #fresh = true;
  /**
   * For limits.idleWhenFullMs: when it last did something useful (performance.now()): its greeting, a reply 2xx/3xx
   * to a command other than a junk one, a message received. Not any command: a NOOP every few seconds kept a slot
   * of a full listener as long as the client liked.
   */
  #usefulAt = performance.now();
  /** A MAIL FROM of it was accepted: it came to send mail. */
  #mailSeen = false;
  /**
   * Replies counted as activity since its last accepted message: bounded, or a client repeating an accepted RCPT
   * (or MAIL FROM, RSET) every few seconds held a slot of a full listener for a day, never sending a message.
   */
  #activitySinceMessage = 0;
  /**
   * When the command being answered reached us (performance.now()), until its reply: the time a client waits for
   * us (a helo script asking DNS) is not its idleness. Counted, a client whose EHLO verdict took longer than
   * idleWhenFullMs was closed for a newcomer in the moment between reading its 250 and sending its MAIL FROM.
   */
  #askedAt: number | null = null;

  /**
   * Its standing when the listener is full (closing-order.ts); null while it must not be closed for another
   * client: just accepted, a command of it being answered, a message being received (its client sends it now;
   * dataTimeoutMs bounds that) or received and waiting for its verdict (the data hook, the spool's commit: its
   * client would read a 421 for a message it may have sent in full, and send it again), not yet greeted (its
   * client must wait for the greeting: the connect hook, the reverse lookup, greetingDelayMs; silent, it ranked
   * first of all to close), or closing.
   */
  standing(): Standing | null {
    // smtp-server's _dataStream: from the 354 until the end-of-data reply is written (the handler's callback came at
    // the 354); _ready: set as the greeting is sent.
    if (this.#fresh || !this._ready || !this.counted || this._handlerPending || this.#receiving !== null || this._dataStream) return null;
    return { advanced: this.#advanced, sentAnything: (this._socket as net.Socket).bytesRead > 0, progress: this.#progress };
  }

  get counted(): boolean { return !this._closing && !this._closed; }

  get addressOpenAtAccept(): number { return this.state.addressOpenAtAccept; }

  get countedAddress(): string {
    return this.state.countedAddress ??= countedAddress(this.remoteAddress, this.#server.ipv6PrefixLength);
  }

  slowTransfer(now: number): TransferJudgement | null {
    const { minDataRate, dataRateWindowMs } = this.state.listener.limits;
    if (minDataRate === 0 || !this.counted || !this.#messageArriving()) return null;
    // Bytes read but not yet parsed, or a paused socket: our side holds the message back (a spool that is behind),
    // not its client.
    const parser = this._parser as unknown as { writableLength?: number } | false;
    if ((parser && (parser.writableLength ?? 0) > 0) || this.#source?.readableFlowing === false) return null;
    const rate = this.#transfer.rate(now, this.#bytesIn, dataRateWindowMs);
    if (rate === null || rate.bytesPerSecond >= minDataRate) return null;
    return { ...rate, minimum: minDataRate };
  }

  get idleWhenFullMs(): number { return this.state.listener.limits.idleWhenFullMs; }

  idleWhenFull(now: number, minimum: number): IdleJudgement | null {
    if (minimum === 0 || this._upgrading || this.standing() === null) return null;
    const idleMs = now - this.#usefulAt;
    return idleMs >= minimum ? { idleMs, mailSeen: this.#mailSeen, minimum } : null;
  }

  /** Idle while the listener is full (listener-room.ts): a 421 that says for how long. */
  closeForIdleness(judged: IdleJudgement): void {
    this.#answer('SMTP', reply('closedIdleForAnotherClient', {
      hostname: this.name, seconds: (judged.idleMs / 1000).toFixed(1), min: String(judged.minimum),
      mail: judged.mailSeen ? 'after a MAIL FROM' : 'never a MAIL FROM',
    }));
  }

  /** Its message arrives too slowly while the listener is full (listener-room.ts): a 421 that says why; nothing of it was accepted. */
  closeForSlowTransfer(judged: TransferJudgement): void {
    this.#answer('DATA', reply('dataTooSlowForAnotherClient', {
      hostname: this.name, rate: judged.bytesPerSecond.toFixed(1), seconds: judged.seconds.toFixed(1), min: String(judged.minimum),
    }));
  }

  /** Closed for a client of an address that holds fewer (listener-room.ts): a 421 that says why. */
  closeForAnotherClient(): void {
    this.#answer('SMTP', reply('closedForAnotherClient', { hostname: this.name }));
  }

  /**
   * A line (command or message line) the client began socketTimeoutMs ago is still not complete: the idle
   * timeout's 421, closed. Not while the client waits for us (a reply or the end-of-data verdict is pending),
   * as smtp-server's idle timeout: then the line gets its time again.
   */
  #lineTooSlow(): void {
    if (this._closing || this._upgrading) return;
    const parser = this._parser as unknown as { _dataMode?: boolean } | false;
    if (this._handlerPending || (this._dataStream && parser && !parser._dataMode)) return this.#lineDeadline.restart();
    this.send(421, 'Timeout - closing connection');
  }

  /** Whichever socket feeds the parser (plain, then the TLS socket after STARTTLS) times the client's lines. */
  #timeLines(parser: NodeJS.EventEmitter, source: net.Socket): void {
    this.#source = source;
    const input = (chunk: Buffer): void => {
      this.#bytesIn += chunk.length;
      this.#lineDeadline.input(chunk);
      if (this.#receiving !== null) this.#transfer.read(performance.now(), this.#bytesIn, this.state.listener.limits.dataRateWindowMs);
    };
    source.on('data', input);
    source.once('close', () => this.#lineDeadline.stop());
    parser.once('unpipe', () => source.off('data', input));
  }

  /** The socket feeding the parser now (the TLS socket after STARTTLS). */
  #source: net.Socket | null = null;
  /** How fast its messages arrive, over the last window of their transfers (limits.minDataRate). */
  readonly #transfer = new TransferRate();

  get #server(): ListenerHost { return this._server as unknown as ListenerHost; }

  get trust(): ListenerHost['trust'] { return this.#server.trust; }

  /**
   * The limits of the session's generation (a transaction keeps the one it began with), not smtp-server's options:
   * a reload sets those at once for every connection, so a transaction under way got a lowered maxMessageSize
   * or maxRecipients between its RCPTs or at its DATA while its scripts still ran the old generation (handler_RCPT).
   */
  get maxMessageSize(): number { return this.state.listener.limits.maxMessageSize; }


  decide(stage: DecisionStage, decided: SmtpReply | null, facts?: DecisionFacts): SmtpReply | null {
    this.#nextReply = decided ? { reply: decided, stage, facts } : null;
    return decided?.refuses ? decided : null;
  }

  /** Decide and write a reply here (commands Postern answers itself). */
  #answer(stage: DecisionStage, decided: SmtpReply): void {
    this.decide(stage, decided);
    this.send(decided.responseCode, decided.message);
  }

  /**
   * The message arriving on `stream` must be in (its final dot read) within limits.dataTimeoutMs of its 354: a
   * client sending each line just within socketTimeoutMs would otherwise hold its connection for as long as its
   * message may grow (a one-byte line every few minutes, up to maxMessageSize).
   */
  timeData(stream: NodeJS.EventEmitter): void {
    this.#receiving = stream;
    this.#transfer.start(performance.now(), this.#bytesIn);
    this.#lastMessage = { stream: stream as NodeJS.EventEmitter & { writableEnded?: boolean }, transaction: this.state.transactionId };
    // One timer per connection, restarted for each message (no timer made per message); a message that ended
    // leaves it armed, and its firing finds nothing being received.
    if (this.#dataTimer === null) {
      // Judged after the sockets are read (see _onTimeout): the final dot may be waiting there on a loaded machine.
      this.#dataTimer = setTimeout(() => setImmediate(() => this.#dataTooSlow(this.#bytesIn)), this.state.listener.limits.dataTimeoutMs);
    } else {
      this.#dataTimer.refresh();
    }
    stream.on('close', () => { // after the end, or the client went away
      if (this.#receiving === stream) this.#receiving = null;
      this.#progress = nextProgress(); // a message received is progress, however long it took
      this.#usefulAt = performance.now();
      // Its client waits for the end-of-data verdict now: that wait is not its idleness, whatever the verdict (a
      // refusal after a long content scan is no activity, and the client's next message follows it).
      this.#askedAt = performance.now();
    });
  }

  #dataTimer: NodeJS.Timeout | null = null;
  /** The last message's stream and its transaction: one received in full has its end-of-data line, whatever came of it. */
  #lastMessage: { stream: NodeJS.EventEmitter & { writableEnded?: boolean }; transaction: string | null } | null = null;
  /** This side ended the session with a reply that says so (a 421, a refusal that closes): its decision line told. */
  #closedWithReply = false;
  /** The socket error that ended the client's side (ECONNRESET…), for the lost-connection line. */
  #lostWith: string | undefined;
  /** The stream of the message being received now (between 354 and its end). */
  #receiving: NodeJS.EventEmitter | null = null;

  /**
   * The message deadline passed: 421 if, once the parser has gone through the `readBy` bytes read from the client by
   * then, the final dot is still not among them. smtp-server parses a message over several turns (the rest of a chunk
   * after each dot-stuffed line waits for the next turn; a spool that is behind holds the parser back), so a final dot
   * read in time could still wait in the parser when the deadline was looked at: the client got `421 Timeout` for a
   * message it had sent in time. Only bytes read by the deadline are waited for (a client that keeps sending gains
   * nothing), each turn while the parser gets on, else every CATCH_UP_LOOK_MS, and for socketTimeoutMs at most.
   */
  #dataTooSlow(readBy: number, since = performance.now(), parsedBefore = -1): void {
    if (!this.#messageArriving() || this._closing || this._closed) return;
    const parsed = this.#parsedBytes();
    if (parsed < readBy && performance.now() - since < this.state.listener.limits.socketTimeoutMs) {
      const again = (): void => this.#dataTooSlow(readBy, since, parsed);
      if (parsed > parsedBefore) setImmediate(again);
      else setTimeout(again, CATCH_UP_LOOK_MS).unref();
      return;
    }
    this.#answer('DATA', reply('dataTimeout'));
  }

  /** The message's final dot is not parsed yet (its stream's writable side is ended by it; #receiving outlasts it). */
  #messageArriving(): boolean {
    const stream = this.#receiving as (NodeJS.EventEmitter & { writableEnded?: boolean }) | null;
    return stream !== null && stream.writableEnded !== true;
  }

  /** Bytes from the client the parser has gone through: those handed to it less those it still holds. */
  #parsedBytes(): number {
    const parser = this._parser as unknown as { writableLength?: number } | false;
    return this.#bytesIn - (parser ? parser.writableLength ?? 0 : 0);
  }
  /** Bytes the client's socket handed to the parser (each chunk read, #timeLines). */
  #bytesIn = 0;

  /** The session ended (smtp-server's onClose): no deadline of it may fire, nor keep it in memory. */
  stopTimers(): void {
    if (this.#dataTimer !== null) clearTimeout(this.#dataTimer);
    this.#lineDeadline.stop();
  }

  /** The server is stopping and this session outlived the grace time: 421, closed. */
  closeForShutdown(): void {
    if (!this._closing) this.#answer('SMTP', reply('shuttingDown'));
  }

  /** smtp-server waits a fixed 100 ms before the greeting (early-talker check); ours is per listener. */
  override init(): void {
    this._setListeners(() => {
      const opts = this._server.options as { maxClients?: number };
      // Nobody is closed for a client over its own per-address limit: it is refused that way next (onConnect).
      const full = opts.maxClients && (this._server.connections.size > opts.maxClients || this.state.overListenerLimit);
      if (!full || (!this.state.overIpLimit && this.#server.makeRoomFor(this))) return this.#greet();
      if (this.state.overIpLimit) return this.#refuseListenerFull();
      // A slow transfer is judged in the check phase, after this turn's reads: a client's bytes that came while our
      // event loop was late are counted before it is found slow (transfer-rate.ts).
      setImmediate(() => {
        if (this._closing || this._closed) return;
        if (this.#server.closeSlowestTransferFor(this) || this.#server.closeIdlestFor(this)) this.#greet();
        else this.#refuseListenerFull();
      });
    });
  }

  #refuseListenerFull(): void {
    this.#answer('CONNECT', reply('tooManyClients', { hostname: this.name }));
  }

  /** What the greeting waits for now: a client that talks first is told so, and its line names it (smtp-server-replies.ts). */
  #greetingWait: GreetingWait = 'checks';

  #greet(): void {
    const delay = this.#server.greetingDelayMs;
    if (delay <= 0) return this.connectionReady();
    this.#greetingWait = 'delay';
    setTimeout(() => {
      this.#greetingWait = 'checks'; // the reverse lookup and the connect checks, next
      this.connectionReady();
    }, delay).unref();
  }

  /**
   * STARTTLS: the handshake gets the deadline an implicit-TLS handshake gets (limits.tlsHandshakeTimeoutMs).
   * The idle timeout alone (minutes, restarted by every byte) let a client hold its connection for hours by
   * sending its ClientHello a byte at a time.
   */
  override upgrade(callback: () => void, secureCallback?: () => void): void {
    this.#lineDeadline.stop(); // the handshake has its own deadline; the TLS socket's lines get this one again
    this.state.handshakeTrust = this.trust;
    // A completed handshake is activity: its time (our CPU's, under load, as much as the client's) is not idleness,
    // and its client sends EHLO next, a junk command: one whose handshake outlasted idleWhenFullMs was closed for a
    // newcomer before its MAIL FROM. At most one per connection (STARTTLS is refused once in TLS).
    super.upgrade(callback, () => {
      this.#usefulAt = performance.now();
      secureCallback?.();
    });
    const raw = this._socket;
    // Judged after the sockets are read, with its time once more for a handshake that progressed (handshake-deadline.ts).
    const cancel = handshakeDeadline(raw, this.#server.tlsHandshakeTimeoutMs, () => {
      if (!this._upgrading || raw.destroyed) return;
      // Closed without a reply (none can be sent in the middle of a handshake): a decision line of its own.
      this.#server.runtime.logger.info({
        cid: this.id, listener: this.state.listener.name, decision: 'reject', stage: 'STARTTLS', client: this.remoteAddress,
        reason: 'limits.tlsHandshakeTimeoutMs: the TLS handshake after STARTTLS not completed (closed)', reply: null,
      }, 'STARTTLS handshake not completed in time: closed');
      metrics.tlsHandshakeFailures.inc({ listener: this.state.listener.name });
      raw.destroy();
    });
    raw.once('close', cancel);
  }

  /**
   * smtp-server arms the idle timeout of the TLS socket it made for STARTTLS here (the one place it passes a socket
   * other than the connection's own). A client that half-closed (FIN) before its handshake completed can never
   * complete it: that socket is closed at once rather than held, with its slot, for the rest of the handshake's
   * deadline (10 s by default).
   */
  override _armTimeout(socket?: net.Socket): void {
    super._armTimeout(socket);
    if (!socket || socket === this._socket || !this._upgrading) return;
    socket.once('end', () => { if (this._upgrading && !socket.destroyed) socket.destroy(); });
  }

  /**
   * Every reply passes here. A reply Postern decided (decide()) is written as decided — code, enhanced
   * code, text — logged with its reason when it refuses, and closes the connection when it says so.
   * Anything else is smtp-server's own reply: the EHLO reply gets this connection's AUTH line, texts that
   * already start with an enhanced code keep it (smtp-server would add its own guess), refusals are logged.
   */
  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    const decided = this.#nextReply;
    this.#nextReply = null;
    this.#answered();
    if (code < 400) this.#wasUseful();
    if (code < 300 && this.#stage === 'RCPT') this.#recipients.accepted(this.session);
    const addressCommand = this.#addressCommand;
    this.#addressCommand = null;
    batchReply(this._socket as net.Socket);
    // A decided reply is the one smtp-server is sending now (same code); smtp-server may still answer
    // otherwise (its own size limit, a timeout), and then its reply goes out as its own.
    if (decided !== null && decided.reply.responseCode === code) {
      const { reply: sent, stage, facts } = decided;
      const closedUnanswered = this.state.closedUnanswered;
      const clientLeft = !this.#replyReaches() && !closedUnanswered;
      if (sent.refuses) {
        // The decision stands (its line says why), but a client that left got no refusal: not counted as one. One
        // closed unanswered (tls.strict) was refused, by the close: counted, and its line says no reply went out.
        if (!clientLeft) this.#refusalCounted(stage, code, sent.reason);
        const unsent = closedUnanswered ? 'the connection was closed without a reply (tls.strict)' : clientLeft ? 'the client had left' : null;
        logRefusal(this.#server.runtime.logger, this, stage, sent, this.#withEnvelope(withWrittenPath(stage, facts, addressCommand)), unsent);
      } else if (clientLeft && stage === 'END-OF-MESSAGE') {
        // Spooled (and delivered), but the client never read its 250: it may send the message again.
        this.#server.runtime.logger.info({ cid: this.id, client: this.remoteAddress, reply: sent.message },
          `the client left before its 250 after DATA: the message stays spooled and may come again (${sent.message})`);
      }
      super.send(code, this.#utf8Replies() ? sent.message : asciiReplyText(sent.message), false);
      if (sent.disconnect || code === 421) this.#closedWithReply = true;
      // smtp-server closes after a 421 itself.
      if (sent.disconnect && code !== 421) this.close();
      this.#counted(code, sent.message, stage);
      return;
    }
    // Only the EHLO reply has several lines.
    if (code === 250 && Array.isArray(data)) data = this.#ehloLines(data);
    // smtp-server's own refusals the catalogue names go out as the catalogue has them, logged with its reason.
    const named = code >= 400 ? catalogueReplyFor(code, data, this.name, this.#greetingWait) : null;
    if (named !== null) data = named.message;
    context = refusalContext(code, context);
    const ownCode = typeof data === 'string' ? ENHANCED_CODE_PREFIX.test(data)
      : Array.isArray(data) && data.length > 0 && ENHANCED_CODE_PREFIX.test(data[0]!);
    // A reply that reaches nobody (smtp-server's 450 for a message cut off by the close, its timeout after the
    // client left): no decision line, no refusal counted.
    if (code >= 400 && this.#replyReaches()) this.#logProtocolRefusal(code, data, context, addressCommand, named?.reason);
    if (code === 421) this.#closedWithReply = true;
    if (!this.#utf8Replies()) data = typeof data === 'string' ? asciiReplyText(data) : Array.isArray(data) ? data.map(asciiReplyText) : data;
    super.send(code, data, ownCode ? false : context);
    this.#counted(code, Array.isArray(data) ? data.join(' ') : data ?? '', null);
  }

  /** RCPT commands accepted in the transaction, a recipient named again counted again (recipient-count.ts). */
  readonly #recipients = new RecipientCount();

  /** The command being answered waited for us since #askedAt: that wait is not the client's idleness. */
  #answered(): void {
    if (this.#askedAt === null) return;
    const now = performance.now();
    this.#usefulAt = Math.min(now, this.#usefulAt + (now - this.#askedAt));
    this.#askedAt = null;
  }

  /** A 2xx/3xx reply to the command being answered (#stage; CONNECT: the greeting): activity, unless a junk command's. */
  #wasUseful(): void {
    if (JUNK_COMMANDS.has(this.#stage)) return;
    if (this.#stage !== 'CONNECT' && ++this.#activitySinceMessage > this.state.listener.limits.maxRecipients + ACTIVITY_BEYOND_RECIPIENTS) return;
    this.#usefulAt = performance.now();
    if (this.#stage === 'MAIL') this.#mailSeen = true;
  }

  /** Whether a reply sent now is written (smtp-server's own test in its send()): not once the client has left. */
  #replyReaches(): boolean {
    const socket = this._socket as net.Socket | undefined;
    return !this._closed && !this._upgrading && !!socket && !socket.destroyed && socket.readyState === 'open';
  }

  /**
   * Replies may carry UTF-8 only within a transaction whose MAIL FROM declared SMTPUTF8, and in the reply to that
   * MAIL FROM itself (RFC 6531 §3.7.4.2); to any other client (or outside the transaction) they are 7-bit, as RFC
   * 5321 §2.4 has them: a script's text built from a client's UTF-8 HELO name, or written in the script's own
   * language, went out as UTF-8 to clients that read replies as ASCII or Latin-1.
   */
  #utf8Replies(): boolean {
    const mail = this.session.envelope?.mailFrom;
    if (mail) return declaresUtf8(mail);
    return this.#stage === 'MAIL' && this.#mailDeclaredUtf8;
  }

  /** The last MAIL FROM command parsed declared SMTPUTF8 (its reply may be UTF-8 even when it refuses it). */
  #mailDeclaredUtf8 = false;

  /**
   * Postfix's hard error limit: every refusal counts, and at limits.maxErrors the connection gets its 421 and
   * is closed. An accepted message forgives what came before (as Postfix does).
   */
  #counted(code: number, text: string, stage: DecisionStage | null): void {
    const st = this.state;
    if (code < 400) {
      if (stage === 'END-OF-MESSAGE') {
        st.errors = st.junkCommands = st.recipientOvershoot = 0;
        this.#activitySinceMessage = 0;
        this.#usefulAt = performance.now();
        st.messagesAccepted++;
      }
      return;
    }
    if (code === 421 || this._closing) return;
    if (code === 452 && /too many recipients/i.test(text) && ++st.recipientOvershoot <= RECIPIENT_OVERSHOOT) return;
    this.#countError();
  }

  /** One more refusal; true when it reached the limit and the connection is being closed. */
  #countError(): boolean {
    const st = this.state;
    if (++st.errors < st.listener.limits.maxErrors) return false;
    this.#answer('SMTP', reply('tooManyErrors', { hostname: this.name }));
    return true;
  }

  /**
   * smtp-server's idle timeout, which it arms at the connection's start: not while the greeting is still ours to
   * send (the early-talker pause, reverse DNS, the connect script, the limits' checks). The client waits for us
   * then; a short `socketTimeoutMs` on a loaded machine answered `421 Timeout` in place of the greeting. Up to the
   * five minutes a client waits for a greeting (RFC 5321 §4.5.3.2.1), so a connect phase that never ended would
   * still be closed.
   *
   * Judged in the check phase after the timer, once the poll phase has read what arrived: an event loop that gets the
   * CPU back late (a loaded machine) runs its timers before it reads its sockets, and a client whose command had come
   * in time, waiting there, was answered `421 Timeout`. A client that sent anything meanwhile is not idle: the timeout
   * is armed again (its timer already restarted with the bytes).
   */
  override _onTimeout(): void {
    if (!this._ready && !this._closing && !this._closed) {
      this.#greetingWaitSince ??= performance.now();
      if (performance.now() - this.#greetingWaitSince < GREETING_WAIT_MS) {
        this._armTimeout();
        return;
      }
    }
    const chunks = this.#lineDeadline.chunks;
    setImmediate(() => {
      if (this._closed) return;
      if (this.#lineDeadline.chunks !== chunks && !this._closing) this._armTimeout();
      else super._onTimeout();
    });
  }
  #greetingWaitSince: number | undefined;

  /**
   * Before smtp-server reads a command: a command that is not UTF-8 is refused (decoding it would put U+FFFD
   * in place of the bytes, so an address would silently become another); junk commands are counted.
   * AUTH continuation lines and anything before the greeting or during a TLS upgrade are smtp-server's.
   */
  override _onCommand(command: Buffer, callback?: () => void): void {
    // smtp-server builds its parser in its constructor, before this class's fields exist: found by the parser.
    const input = this._parser ? PipelinedInput.of(this._parser) : undefined;
    input?.lineTaken();
    if (this._ready && !this._closing) this.#askedAt ??= performance.now();
    this.#progress = nextProgress();
    this.#advanced = true;
    if (this._ready && !this._upgrading && !this._nextHandler && !this._closing) {
      if (!isUtf8(command)) {
        this.#answer('SMTP', reply('badUtf8'));
        if (!this._closing) setImmediate(() => this._whenWritable(callback ?? (() => undefined)));
        return;
      }
      const verb = commandVerb(command);
      this.#stage = SMTP_VERBS.has(verb) ? verb : 'UNKNOWN';
      this.#addressCommand = verb === 'MAIL' || verb === 'RCPT' ? command : null;
      // A DATA that will be refused (no recipient accepted) with input already behind it: that input is the
      // message, sent ahead of the 354. Read on, each of its lines would run as a command (a body holding
      // MAIL, RCPT, DATA and a dot became a message of its own): refused and closed, nothing more read.
      if (verb === 'DATA' && (!this.session.envelope.rcptTo.length || hasArgument(command)) && input?.more) {
        this.#answer('DATA', reply('pipelinedAfterRefusedData', {}, { disconnect: true }));
        return;
      }
      // The same for a DATA refused because the spool cannot confirm writes (handler_DATA): refused and closed.
      if (verb === 'DATA' && input?.more && this.session.envelope.rcptTo.length && !hasArgument(command) && spoolCannotConfirm(this.#server.runtime, this.id)) {
        this.#answer('DATA', reply('spoolNotConfirming', {}, { disconnect: true }));
        return;
      }
      // BDAT (CHUNKING, not offered): its chunk follows at once, whatever the reply (RFC 3030), and is no lines:
      // read as commands, any line in it would run. Refused and closed, as for the DATA above.
      if (verb === 'BDAT') {
        this.#answer('BDAT', reply('chunkingNotOffered', {}, { disconnect: true }));
        return;
      }
      // Outside a transaction each command takes the configuration in force (a transaction keeps its own): a
      // session kept open across reloads (NOOPs, EHLOs, AUTH) would otherwise log in against a users file changed
      // since, run the helo script of then, and hold that generation's isolates for as long as it stays.
      if (!this.session.envelope.mailFrom) this.#server.policy.adoptCurrentGeneration(this);
      if (JUNK_COMMANDS.has(verb) && ++this.state.junkCommands > this.state.listener.limits.maxJunkCommands && this.#countError()) return;
      // Unrecognised commands are refusals, bounded by limits.maxErrors (which an accepted message resets): smtp-server's
      // own fixed count of them (never reset) closed the connection at the 10th with 421 4.4.2, whatever maxErrors said.
      this._unrecognizedCommands = 0;
    }
    super._onCommand(command, callback);
  }

  /**
   * A client may shut its sending side (half-close) after its last command, as a pipelining client does after
   * QUIT (`nc -N`). Node's default ended our side too at the client's FIN: the commands still queued were never
   * answered, and a message among them was spooled while its 250 never left (the client then sends it again).
   * Our side stays open until every command received has been answered, then closes (as Postfix does).
   */
  override _createParser(): ReturnType<SMTPConnection['_createParser']> {
    const parser = super._createParser();
    useMessageStream(parser); // each message on a MessageStream, not a PassThrough
    continueInOrder(parser); // messages pipelined one behind another each resume the input
    PipelinedInput.follow(parser);
    // Whichever socket feeds this parser (plain, or the TLS socket after STARTTLS) waits for us to close it.
    parser.on('pipe', keepAnsweringAfterFin);
    parser.on('pipe', (source: net.Socket) => this.#timeLines(parser, source));
    // 'finish': the client's input has ended and every command of it has been handled.
    parser.once('finish', () => { if (this._parser === parser && !this._closing) this.close(); });
    return parser;
  }

  /**
   * A client that resets the connection outside a mail transaction (many do, right after QUIT) is the
   * normal end of a connection: smtp-server still logs it at error level, once per socket. Debug here.
   */
  override _onError(err: Error & { code?: string; remoteAddress?: string }): void {
    if (err.code !== undefined && CLIENT_WENT_AWAY.has(err.code) && this.session.envelope?.mailFrom) {
      // Within a transaction: the lost-connection line (at the close) says so, with the envelope and this code.
      this.#lostWith = err.code;
      this.close();
      return;
    }
    if (err.code !== undefined && CLIENT_WENT_AWAY.has(err.code) && !this.session.envelope?.mailFrom) {
      this.#server.runtime.logger.debug({ cid: this.id, client: this.remoteAddress, code: err.code }, 'client went away (%s)', err.code);
      this.close();
      return;
    }
    // The server's 'error' event logs it (engine/app/postern.ts): with this session's id, to find its other lines, and
    // during the handshake after STARTTLS as the session's end there (a decision line of stage STARTTLS).
    Object.assign(err, { cid: this.id, starttls: this._upgrading === true });
    super._onError(err);
  }

  /** The socket closed: a transaction it cut off is logged (see #logLostTransaction). */
  override _onClose(): void {
    if (!this._closed) this.#logLostTransaction();
    super._onClose();
  }

  /**
   * A session that ended with a transaction open — the client closed or reset the connection after MAIL, RCPT or
   * in the middle of its message — leaves one info line naming the transaction, as Postfix's `lost connection
   * after DATA`: before, nothing at info said a message had been lost (a reset at most left `client connection
   * error`, with no session id and no envelope). Not when this side closed with a reply (its decision line has
   * the envelope), after QUIT, or for a message received in full (its end-of-data line tells what came of it).
   */
  #logLostTransaction(): void {
    const envelope = this.session.envelope;
    const mail = envelope?.mailFrom;
    const id = this.state.transactionId;
    if (!mail || id === null || this.#closedWithReply || this.#stage === 'QUIT') return;
    const last = this.#lastMessage;
    if (last !== null && last.transaction === id && last.stream.writableEnded) return;
    const to = envelope.rcptTo.map((r) => r.address);
    const shown = to.slice(0, LOGGED_RECIPIENTS).join(',');
    const stage = last !== null && last.transaction === id ? 'DATA' : this.#stage;
    const name = clientName(this.clientHostname);
    this.#server.runtime.logger.info({
      cid: this.id, id, client: this.remoteAddress, clientName: name, listener: this.state.listener.name, stage, lost: true,
      clientError: this.#lostWith, from: mail.address, to: shown || undefined, nrcpt: to.length, user: this.state.user ?? undefined,
    }, `${id}: lost connection after ${stage}${stage === 'DATA' && last?.transaction === id ? ' (message not received in full)' : ''} from ${name ?? 'unknown'}[${this.remoteAddress}]${this.#lostWith ? ` (${this.#lostWith})` : ''}: transaction not completed; from=<${mail.address}>${shown ? ` to=<${shown}>` : ''} nrcpt=${to.length}`);
  }

  /** Every refusal sent, by stage and reason; one at connect is a refused connection too. */
  #refusalCounted(stage: DecisionStage, code: number, reason: string | undefined): void {
    refusalCounted(this.state.listener.name, stage, code, reason);
    if (stage === 'CONNECT') connectRefusalCounted(this.state.listener.name, reason);
  }

  /** A refusal smtp-server wrote itself: logged and counted like Postern's, with the enhanced code the wire has. */
  #logProtocolRefusal(code: number, data: string | string[] | null | undefined, context: string | false | undefined, addressCommand: Buffer | null, catalogued: string | undefined): void {
    const line = Array.isArray(data) ? data.join(' ') : data ?? '';
    const own = ENHANCED_CODE_PREFIX.exec(line);
    const text = own ? line.slice(own[0].length) : line;
    // An over-long line was dropped unread: no command of its own, so the session's stage, not the last verb's.
    const stage = code === 421 && text.endsWith('Command line too long') ? 'SMTP' : this.#stage;
    const asked = (stage === 'MAIL' || stage === 'RCPT') && addressCommand ? this.#askedAddress(stage, addressCommand) : false;
    // A path that does not parse is named as written, not as the sender or the recipients so far.
    const written = (stage === 'MAIL' || stage === 'RCPT') && addressCommand && !asked ? writtenPath(addressCommand) : undefined;
    const mail = stage === 'MAIL' && written !== undefined ? { address: written } : (stage === 'MAIL' && asked) || this.session.envelope?.mailFrom;
    const rcpt = stage === 'RCPT' ? written ?? (asked ? asked.address : undefined) : undefined;
    const reason = catalogued ?? smtpServerReason(code, text, context);
    this.#refusalCounted(stage, code, reason);
    const overLimit = context === 'TOO_MANY_RECIPIENTS' ? this.state.recipientOvershoot + 1 : undefined;
    if (overLimit !== undefined && !loggedOvershoot(overLimit)) return;
    logRefusal(this.#server.runtime.logger, this, stage,
      { responseCode: code, enhanced: own ? own[0].trim() : this._getEnhancedStatusCode(code, context), text, reason },
      this.#withEnvelope({ from: mail ? mail.address : undefined, to: rcpt, overLimit }));
  }

  /**
   * A refusal's facts with the open transaction's envelope where they name none: its sender, queue id and the
   * recipients accepted so far. A refusal that ends the transaction without being about its sender or one
   * recipient (a data timeout, too many errors, an idle or over-long line, shutdown) otherwise left a line
   * that did not say whose mail was lost (`NOQUEUE: defer: DATA … 421 4.4.2 Timeout`, no from, no to).
   */
  #withEnvelope(facts: DecisionFacts | undefined): DecisionFacts | undefined {
    const envelope = this.session.envelope;
    const mail = envelope?.mailFrom;
    if (!mail) return facts;
    const recipients = envelope.rcptTo.length ? envelope.rcptTo.map((r) => r.address) : undefined;
    return { ...facts, from: facts?.from ?? mail.address, to: facts?.to ?? recipients, id: facts?.id ?? this.state.transactionId };
  }

  /**
   * The address a MAIL or RCPT command named, for the line of smtp-server's own refusal of it (530 before AUTH,
   * 452 over maxRecipients): only an address its handler would take (no control or format characters), read
   * without its side effects.
   */
  #askedAddress(verb: DecisionStage, command: Buffer): SMTPServerAddress | false {
    const path = preparedPath(command);
    return path && !(path instanceof SmtpReply) ? super._parseAddressCommand(verb === 'MAIL' ? 'mail from' : 'rcpt to', path) : false;
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

  /**
   * RCPT TO:<postmaster> (no domain) becomes postmaster@<first local domain, else hostname> here, before
   * smtp-server indexes the recipient (a repeat then replaces it) and before the relay rule and script see it.
   */
  override _parseAddressCommand(name: string, command: Buffer | string): ReturnType<SMTPConnection['_parseAddressCommand']> {
    const parsed = super._parseAddressCommand(name, command);
    if (!parsed) return parsed;
    const rcpt = name.toUpperCase() === 'RCPT TO';
    // The domain in envelope form (envelope-path.ts): the A-labels of an ASCII transaction stay A-labels.
    const mail = rcpt ? this.session.envelope.mailFrom : parsed;
    const utf8 = !!mail && declaresUtf8(mail);
    if (!rcpt) this.#mailDeclaredUtf8 = utf8;
    const asciiCommand = typeof command === 'string' ? !/[^\x00-\x7f]/.test(command) : isAscii(command);
    return canonicalAddress(parsed, rcpt, utf8, asciiCommand, this.state.generation.config) ? parsed : false;
  }

  /** MAIL FROM and RCPT TO: refused for a character no address carries, a quoted local part unquoted or refused when it needs its quotes (envelope-path.ts). */
  override handler_MAIL(command: Buffer, callback: Callback): void {
    const path = preparedPath(command);
    if (path instanceof SmtpReply) return this.#answerPath('MAIL', path, callback);
    const badParameter = parameterControlRefusal(path) ?? unnamedParameterRefusal(path);
    if (badParameter) return this.#answerPath('MAIL', badParameter, callback);
    super.handler_MAIL(path, callback);
  }

  override handler_RCPT(command: Buffer, callback: Callback): void {
    const path = preparedPath(command);
    if (path instanceof SmtpReply) return this.#answerPath('RCPT', path, callback);
    const badParameter = parameterControlRefusal(path) ?? unnamedParameterRefusal(path);
    if (badParameter) return this.#answerPath('RCPT', badParameter, callback);
    const maxRecipients = this.state.listener.limits.maxRecipients;
    // smtp-server counts distinct recipients only (one named again replaces the first, never over the limit): past
    // maxRecipients accepted RCPTs in the transaction, repeated ones too, its own 452, as for a recipient over it.
    if (this.#recipients.full(this.session, maxRecipients)) {
      refuseTooMany(this);
      return callback();
    }
    // smtp-server compares with its options' maxRecipients at once, before any callback: the session's for that moment.
    const options = this._server.options as { maxRecipients?: number };
    const serverWide = options.maxRecipients;
    options.maxRecipients = maxRecipients;
    try {
      super.handler_RCPT(path, callback);
    } finally {
      options.maxRecipients = serverWide;
    }
  }

  /**
   * smtp-server checks REQUIRETLS itself, before Postern's check of the parameters offered (session-policy.ts), and on
   * a plaintext session answered `530 5.7.0 REQUIRETLS not permitted on non-TLS connections`: told to start TLS, the
   * client got 555 there, as REQUIRETLS is offered nowhere. Refused as any parameter not offered is, whatever the session.
   */
  override _validateMailParams(parsed: Parameters<SMTPConnection['_validateMailParams']>[0]): ReturnType<SMTPConnection['_validateMailParams']> {
    const args = parsed.args as Record<string, unknown> | false | undefined;
    if (!args || args.REQUIRETLS === undefined) return super._validateMailParams(parsed);
    const refusal = reply('parameterUnsupported', { parameter: 'REQUIRETLS' });
    this.decide('MAIL', refusal, { from: parsed.address });
    return { code: refusal.responseCode, message: refusal.message, enhancedCode: null };
  }

  #answerPath(stage: DecisionStage, refusal: SmtpReply, callback: Callback): void {
    this.#answer(stage, refusal);
    callback();
  }

  /** DATA and RSET with an argument: 501, as Postfix (DATA without recipients is still smtp-server's 503 first). */
  override handler_DATA(command: Buffer, callback: Callback): void {
    if (this.session.envelope.rcptTo.length && hasArgument(command)) return this.#answerPath('DATA', reply('dataSyntax'), callback);
    // A sync of the spool hangs: refused before the 354, not after the client has sent its message whole. And closed:
    // a client that did not wait for this reply has its message on the way, maybe in a read after this DATA (its second
    // segment), where _onCommand's look at the input behind the DATA does not see it; read on, each of its lines would
    // run as a command. Nothing is lost: the client sends it again, as after any 451.
    const unconfirmed = this.session.envelope.rcptTo.length ? spoolCannotConfirm(this.#server.runtime, this.id) : null;
    if (unconfirmed) return this.#answerPath('DATA', reply(unconfirmed, {}, { disconnect: true }), callback);
    super.handler_DATA(command, callback);
  }

  override handler_RSET(command: Buffer, callback: Callback): void {
    if (hasArgument(command)) return this.#answerPath('RSET', reply('rsetSyntax'), callback);
    super.handler_RSET(command, callback);
  }

  /**
   * STARTTLS on a listener without TLS of its own (tls.mode none): refused. smtp-server only hides it there, and
   * answered it with a handshake on its built-in certificate, whose key anyone has: the session was then logged
   * and stamped (Received: ESMTPS) as encrypted.
   */
  override handler_STARTTLS(command: Buffer, callback: Callback): void {
    if (this.state.listener.tls.mode === 'none') return this.#answerPath('STARTTLS', reply('starttlsNotOffered'), callback);
    super.handler_STARTTLS(command, callback);
  }

  /**
   * sendmail's WIZ, SHELL and KILL, which smtp-server answers with jokes ("This incident will be reported", "Can not
   * kill Mom") and WIZ <anything> with `200 Please pass, oh mighty wizard`: a reply that was no refusal, so it left no
   * line, was counted by neither maxErrors nor maxJunkCommands, and let a client hold its connection with it for
   * ever. Not commands Postern knows: refused as any other unknown command.
   */
  override handler_WIZ(_command: Buffer, callback: Callback): void { this.#answerPath(this.#stage, reply('commandNotRecognized'), callback); }
  override handler_SHELL(_command: Buffer, callback: Callback): void { this.#answerPath(this.#stage, reply('commandNotRecognized'), callback); }
  override handler_KILL(_command: Buffer, callback: Callback): void { this.#answerPath(this.#stage, reply('commandNotRecognized'), callback); }

  override handler_EHLO(command: Buffer, callback: Callback): void { this.#helo('EHLO', command, callback); }
  override handler_HELO(command: Buffer, callback: Callback): void { this.#helo('HELO', command, callback); }

  #helo(verb: 'HELO' | 'EHLO', command: Buffer, callback: Callback): void {
    const base = verb === 'EHLO' ? super.handler_EHLO : super.handler_HELO;
    const parts = command.toString().trim().split(/\s+/);
    const runBase = (): void => {
      base.call(this, command, callback);
      if (this.hostNameAppearsAs) {
        this.state.heloName = this.hostNameAppearsAs;
        this.state.heloCommand = verb;
      }
    };
    if (parts.length !== 2) return runBase(); // smtp-server answers the syntax error
    this.#server.policy.helo(this, parts[1]!, verb).then((refusal) => {
      if (refusal) {
        this.#answer('HELO', refusal);
        return callback();
      }
      runBase();
    }, (err: unknown) => {
      this.#answer('HELO', this.#server.policy.internalError(this, err));
      callback();
    });
  }

  override handler_AUTH(command: Buffer, callback: Callback): void {
    const args = command.toString().trim().split(/\s+/);
    const method = (args[1] ?? '').toUpperCase();
    const st = this.state;
    const refuse = (refusal: SmtpReply): void => { this.#answer('AUTH', refusal); callback(); };
    if (st.saslAuthenticated) return refuse(reply('authAlreadyDone'));
    if (this.session.envelope.mailFrom) return refuse(reply('authInTransaction'));
    if (st.listener.tls.mode !== 'none' && !this.secure) return refuse(reply('authNeedsTls'));
    // A bare AUTH is a syntax error (Postfix: 501 5.5.4 Syntax: AUTH mechanism), not a mechanism this listener lacks.
    if (method === '' && st.listener.auth.mechanisms.length) return refuse(reply('authSyntax'));
    if (!st.listener.auth.mechanisms.includes(method as 'PLAIN')) return refuse(reply('authMechanismUnknown'));
    // An address over its auth-failure limit gets no further AUTH on any connection, even one opened before.
    this.#server.policy.authAllowed(this).then((refusal) => {
      if (refusal) return refuse(refusal);
      if (method === 'EXTERNAL') return this.#authExternal(args.slice(2), callback);
      // smtp-server's own AUTH refuses any AUTH once session.user is set, but a certificate auto-login is not a
      // SASL login: one AUTH is still allowed, so run its mechanism directly (a failure keeps the cert login).
      const mechanism = (sasl as unknown as Record<string, (this: SMTPConnection, args: string[], cb: Callback) => void>)[`SASL_${method}`]!;
      const initial = args[2];
      if (args.length === 3 && initial !== '=' && !isSaslBase64(initial!)) return refuse(reply('authBadBase64'));
      mechanism.call(this, args.slice(2), () => this.#base64Checked(callback));
    }, (err: unknown) => refuse(this.#server.policy.internalError(this, err)));
  }

  /**
   * smtp-server's PLAIN and LOGIN decode each response with Node's lenient base64 (characters outside the
   * alphabet skipped, anything after padding dropped): the response line smtp-server now waits for, if any, is
   * checked first, and one that is not base64 (nor empty, nor `=`) is refused with 501; `*` cancels with the reply
   * EXTERNAL's cancel gets.
   */
  #base64Checked(callback: Callback): void {
    const next = this._nextHandler;
    if (next) {
      this._nextHandler = (line: Buffer, cb: Callback) => {
        const text = line.toString().trim();
        // An empty line or `=` is an empty response (curl answers a 334 with `=`, as EXTERNAL accepts).
        const refusal = text === '*' ? reply('authAborted') : text !== '' && text !== '=' && !isSaslBase64(text) ? reply('authBadBase64') : null;
        if (refusal) {
          this.#answer('AUTH', refusal);
          return cb();
        }
        next.call(this, line, () => this.#base64Checked(cb));
      };
    }
    callback();
  }

  #authExternal(rest: string[], callback: Callback): void {
    if (rest.length > 1) {
      this.#answer('AUTH', reply('authExternalSyntax'));
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
      this.#answer('AUTH', reply(EXTERNAL_REFUSALS[parsed.failure]));
      return callback();
    }
    this.#server.policy.authenticate(this, { mechanism: 'EXTERNAL', username: parsed.authzid, password: '', authzid: parsed.authzid })
      .then((result) => {
        if (result instanceof SmtpReply) {
          this.#answer('AUTH', result);
          return callback();
        }
        this.session.user = result;
        this.session.transmissionType = this._transmissionType();
        this.#answer('AUTH', reply('authSucceeded'));
        callback();
      }, (err: unknown) => {
        this.#answer('AUTH', this.#server.policy.internalError(this, err));
        callback();
      });
  }
}

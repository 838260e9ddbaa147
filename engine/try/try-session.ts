/**
 * One `postern try` session: the server's own decision code (SessionPolicy, the built-in rules, the
 * verdict table and reply catalogue) driven step by step without a client. The facts come from flags or a
 * session file instead of a socket; the client certificate goes through a real handshake with the
 * listener's TLS options (loopback-tls.ts). Every script call of a step is captured (hook-calls.ts) with
 * the context it saw, its verdict and what it logged. Nothing is spooled, nothing is delivered; counters
 * (rate(), counter(), limits) start from zero in this process's memory, never in the live store.
 */
import { hopLimitRefusal } from '../smtp/hop-limit.ts';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { LoadedConfig } from '../config/load-config.ts';
import type { ListenerConfig } from '../config/schema.ts';
import { buildGeneration, type BuiltGeneration } from '../generation/build-generation.ts';
import { observeHookCalls, type HookCall } from '../policy/hook-calls.ts';
import { FAIL_CLOSED } from '../policy/verdict.ts';
import { createLogger, type Logger } from '../logging/logger.ts';
import { MemoryCounterStore } from '../store/index.ts';
import { AuthFailureLimiter } from '../auth/failure-limiter.ts';
import { ConnectionState } from '../smtp/connection-state.ts';
import { SessionPolicy } from '../smtp/session-policy.ts';
import type { SmtpClient } from '../smtp/smtp-client.ts';
import type { Runtime } from '../smtp/runtime.ts';
import { SmtpReply } from '../smtp/reply.ts';
import { AddressCommands, freshEnvelope } from '../smtp/address-command.ts';
import { canonicalIp } from '../addresses/ip-text.ts';
import { reply } from '../smtp/replies.ts';
import { HeaderReader } from '../smtp/header-reader.ts';
import { headerRefusal, spooledSession } from '../smtp/message-intake.ts';
import { Spool } from '../spool/spool.ts';
import { runPredelivery } from '../delivery/predelivery.ts';
import { parseAddressList } from '../delivery/address-list.ts';
import type { HookName, PredeliveryContext } from '../sandbox/api/index.ts';
import { loadScriptDirectory } from '../sandbox/index.ts';
import { loopbackHandshake, type ClientCredentials, type LoopbackHandshake } from './loopback-tls.ts';

export type StepName = 'connect' | 'starttls' | 'helo' | 'auth' | 'login' | 'mailfrom' | 'rcptto' | 'data' | 'predelivery';

/**
 * 0 accept, 1 reject, 2 defer, 3 a script error, 4 hold: `postern try`'s exit codes. A held message gets its
 * 250 but is not delivered until released: a CI that checks "this message goes through" must not pass on it.
 */
export type Outcome = 'accept' | 'reject' | 'defer' | 'error' | 'hold';
export const EXIT_CODES: Record<Outcome, number> = { accept: 0, reject: 1, defer: 2, error: 3, hold: 4 };

export interface LogLine { level: string; script?: string; msg: string }

export interface StepResult {
  step: StepName;
  /** What a client would have sent (or what happened, for connect and TLS). */
  command: string;
  /** The reply line the client would get (predelivery: the delivery decision). */
  reply: string;
  outcome: Outcome;
  /** The script calls of this step: context, verdict, failure, duration. */
  calls: HookCall[];
  /** What scripts logged during the step. */
  logs: LogLine[];
  /** DATA accepted with `accept({ hold })`: the script that held the message and its reason (outcome hold). */
  held?: { file: string; reason: string };
}

export interface TryFacts {
  listener?: string;
  ip?: string;
  port?: number;
  /** Client certificate and key for the handshake; null: none presented. */
  certificate?: ClientCredentials | null;
  /** Set up TLS when the listener has it (default true; implicit TLS always does). */
  tls?: boolean;
}

const PINO_LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };

/**
 * The generation a try runs with: the configuration's own, with its scripts folder replaced by `scripts`
 * when given. A hook without a script gets a stand-in that returns nothing, so that the context it would
 * see is still shown; the decision is the built-in rules', as without it. A stand-in runs in no isolate and
 * under no deadline (SandboxOptions.standIns): the server runs nothing for such a hook, so nothing may fail.
 */
export async function buildTryGeneration(loaded: LoadedConfig, logger: Logger, scripts?: string): Promise<BuiltGeneration> {
  const folders = scripts === undefined ? loaded.config : {
    ...loaded.config, scripts, listeners: loaded.config.listeners.map((l) => ({ ...l, scripts })),
  };
  // Every call on an isolate thread: no client waits on a try, and a script stuck in a step V8 cannot
  // interrupt is then cut off at its deadline with its verdict shown, instead of holding (and, after a few
  // seconds, crashing) the command's own thread.
  const config = { ...folders, sandbox: { ...folders.sandbox, fastPathMs: 0 } };
  return buildGeneration({ ...loaded, config }, {
    logger, store: new MemoryCounterStore(), standIns: true,
  });
}

export class TrySession {
  readonly built: BuiltGeneration;
  readonly listener: ListenerConfig;
  readonly #policy: SessionPolicy;
  readonly #conn: TryConnection;
  readonly #logs: LogLine[];
  readonly #facts: TryFacts;
  readonly #logger: Logger;
  #handshake: LoopbackHandshake | null = null;
  #calls: HookCall[] = [];
  /** The message of the last DATA, for a predelivery step after it; `held`: accepted on hold by its script. */
  #predelivery: { id: string; size: number; sender: string; recipients: string[]; held?: StepResult['held'] } | null = null;
  readonly #stopObserving: () => void;

  private constructor(built: BuiltGeneration, logger: Logger, logs: LogLine[], facts: TryFacts) {
    this.built = built;
    this.#logs = logs;
    this.#facts = facts;
    this.#logger = logger;
    const generation = built.generation;
    this.listener = facts.listener ? generation.listener(facts.listener) : generation.config.listeners[0]!;
    const setup = built.listeners.get(this.listener.name)!;
    const runtime: Runtime = {
      generation, logger,
      // Only ids, the free-space check and whether its syncs hang are asked of the spool at MAIL FROM (and DATA);
      // nothing is written. Typed as what it stands in for: a stand-in that kept the old method name (below) broke
      // every MAIL FROM of postern try.
      spool: ({
        newId: () => Spool.prototype.newId.call(undefined),
        freeSpace: { short: () => null },
        unconfirmedFor: () => null,
        root: '(postern try: no spool)',
      } satisfies { newId: Spool['newId']; freeSpace: Pick<Spool['freeSpace'], 'short'>; unconfirmedFor: Spool['unconfirmedFor']; root: Spool['root'] }) as unknown as Spool,
      authFailures: new AuthFailureLimiter(this.listener.limits.authFailureWindowMs),
      parseAddressList,
    };
    this.#policy = new SessionPolicy(runtime);
    this.#conn = new TryConnection(generation.acquire(), this.listener, facts, setup.trust, setup.options as SMTPServerOptions);
    this.#stopObserving = observeHookCalls((call) => { if (call.generation === generation) this.#calls.push(call); });
  }

  /** Build the generation (the configuration's, or with `scripts` as its scripts folder) and open a session. */
  static async open(loaded: LoadedConfig, facts: TryFacts, scripts?: string): Promise<TrySession> {
    const logs: LogLine[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString().split('\n')) {
          if (!line) continue;
          const o = JSON.parse(line) as { level: number; component?: string; script?: string; msg: string };
          if (o.component === 'script') logs.push({ level: PINO_LEVELS[o.level] ?? String(o.level), script: o.script, msg: o.msg });
        }
        cb();
      },
    });
    const logger = createLogger('info', sink);
    const built = await buildTryGeneration(loaded, logger, scripts);
    const session = new TrySession(built, logger, logs, facts);
    try {
      const cfg = built.generation.config;
      for (const s of await loadScriptDirectory(session.listener.scripts ?? cfg.scripts)) if (s.hook !== 'predelivery') session.#scripted.add(s.hook);
      for (const s of await loadScriptDirectory(cfg.scripts)) if (s.hook === 'predelivery') session.#scripted.add(s.hook);
    } catch (err) {
      await session.close();
      throw err;
    }
    return session;
  }

  readonly #scripted = new Set<HookName>();

  /** The configuration (or --scripts) has a script for `hook` (else a stand-in ran and the built-in rules decided). */
  hasScript(hook: HookName): boolean { return this.#scripted.has(hook); }

  get state(): ConnectionState { return this.#conn.state; }
  get connectionId(): string { return this.#conn.id; }

  async #step(step: StepName, command: string, run: () => Promise<{ reply: string; code: number; held?: StepResult['held'] }>): Promise<StepResult> {
    const logsFrom = this.#logs.length;
    this.#calls = [];
    const { reply: line, code, held } = await run();
    const calls = this.#calls;
    const failed = calls.some((c) => c.failure !== null || c.verdict === FAIL_CLOSED);
    const outcome: Outcome = failed ? 'error' : code >= 500 ? 'reject' : code >= 400 ? 'defer' : held ? 'hold' : 'accept';
    return { step, command, reply: line, outcome, calls, logs: this.#logs.slice(logsFrom), ...(held ? { held } : {}) };
  }

  /** The greeting (implicit TLS: after the handshake, as on the listener). */
  async connect(): Promise<StepResult> {
    if (this.listener.tls.mode === 'implicit') await this.#tls();
    const cfg = this.built.generation.config;
    return this.#step('connect', `connect from ${this.#conn.remoteAddress}`, async () => {
      const decided = await this.#policy.connect(this.#conn);
      return decided ? asLine(decided) : { reply: `220 ${cfg.hostname} ESMTP ${this.listener.banner ?? 'Postern'}`, code: 220 };
    });
  }

  /** STARTTLS, when the listener offers it (and the facts do not say no). Null when there is none. */
  async starttls(): Promise<StepResult | null> {
    if (this.listener.tls.mode !== 'starttls' || this.#facts.tls === false) {
      if (this.#facts.certificate && this.listener.tls.mode === 'none') throw new Error(`listener ${this.listener.name} has no TLS: a client certificate cannot be presented`);
      return null;
    }
    return this.#step('starttls', 'STARTTLS', async () => {
      const socket = await this.#tls();
      const decided = this.#policy.starttls(this.#conn, socket);
      return decided ? asLine(decided) : { reply: '220 2.0.0 Ready to start TLS', code: 220 };
    });
  }

  async #tls(): Promise<TLSSocket> {
    const setup = this.built.listeners.get(this.listener.name)!;
    this.#handshake = await loopbackHandshake(setup.options, this.built.generation.config.hostname, this.#facts.certificate ?? null);
    const socket = this.#handshake.server;
    this.#conn.secure = true;
    this.#conn._socket = socket;
    Object.assign(this.#conn.session, { secure: true, tlsOptions: socket.getCipher(), servername: (socket as { servername?: string }).servername });
    return socket;
  }

  /** HELO or EHLO with `name` as the client writes it after the verb (none, or two words: the listener's 501). */
  async helo(name: string, verb: 'HELO' | 'EHLO' = 'EHLO'): Promise<StepResult> {
    const args = name.trim() ? name.trim().split(/\s+/) : [];
    return this.#step('helo', [verb, ...args].join(' '), async () => {
      // smtp-server's checks, which the listener runs around the helo hook (PosternConnection#helo): the hook is
      // asked only for a command with one argument, and the name's characters are judged after it.
      if (args.length !== 1) return asLine(reply(verb === 'EHLO' ? 'ehloSyntax' : 'heloSyntax'));
      name = args[0]!;
      const decided = await this.#policy.helo(this.#conn, name, verb);
      if (decided) return asLine(decided);
      if (!acceptableHeloName(name)) return asLine(reply('heloNameSyntax'));
      this.state.heloName = name;
      this.state.heloCommand = verb;
      // An accepted HELO/EHLO ends the transaction, as RSET (RFC 5321 §4.1.4; smtp-server's _resetSession).
      this.state.transactionId = null;
      this.#conn.commands.endTransaction();
      return { reply: `250 ${this.built.generation.config.hostname} Nice to meet you, ${this.#conn.clientHostname}`, code: 250 };
    });
  }

  /** AUTH with credentials (PLAIN, LOGIN) or EXTERNAL: the auth hook and the built-in rule decide. */
  async auth(mechanism: string, username: string, password: string, authzid = ''): Promise<StepResult> {
    const shown = mechanism === 'EXTERNAL' ? `AUTH EXTERNAL ${authzid || '='}` : `AUTH ${mechanism} ${username} ********`;
    return this.#step('auth', shown, async () => {
      const refusal = this.#auth(mechanism);
      if (refusal) return asLine(refusal);
      const result = await this.#policy.authenticate(this.#conn, { mechanism, username: mechanism === 'EXTERNAL' ? authzid : username, password, authzid });
      if (typeof result !== 'string') return asLine(result);
      this.#conn.session.user = result;
      return asLine(reply('authSucceeded'));
    });
  }

  /** What PosternConnection refuses before an AUTH reaches the policy. */
  #auth(mechanism: string): SmtpReply | null {
    if (this.state.saslAuthenticated) return reply('authAlreadyDone');
    if (this.#conn.session.envelope.mailFrom) return reply('authInTransaction');
    if (this.listener.tls.mode !== 'none' && !this.#conn.secure) return reply('authNeedsTls');
    if (!this.listener.auth.mechanisms.includes(mechanism as 'PLAIN')) return reply('authMechanismUnknown');
    return null;
  }

  /** Take the session as logged in as `user` (as after a successful AUTH), without running the auth hook. */
  login(user: string): StepResult {
    this.state.user = user;
    this.state.mechanism = 'PLAIN';
    this.state.saslAuthenticated = true;
    this.#conn.session.user = user;
    return { step: 'login', command: `(taken as logged in as ${user}: no AUTH, no auth hook)`, reply: asLine(reply('authSucceeded')).reply, outcome: 'accept', calls: [], logs: [] };
  }

  /**
   * MAIL FROM (`params`: its parameters as a client writes them, `SIZE=1200 BODY=8BITMIME`): smtp-server's own
   * checks first, as on the listener (address-command.ts), then the policy.
   */
  async mailFrom(address: string, params = ''): Promise<StepResult> {
    const command = `MAIL FROM:<${address}>${params ? ` ${params}` : ''}`;
    return this.#step('mailfrom', command, () => this.#conn.commands.run('MAIL', command,
      async (parsed) => (await this.#policy.mailFrom(this.#conn, parsed, this.#conn.session)) ?? reply('senderAccepted')));
  }

  async rcptTo(address: string, params = ''): Promise<StepResult> {
    const command = `RCPT TO:<${address}>${params ? ` ${params}` : ''}`;
    return this.#step('rcptto', command, () => this.#conn.commands.run('RCPT', command,
      async (parsed) => (await this.#policy.rcptTo(this.#conn, parsed, this.#conn.session)) ?? reply('recipientAccepted')));
  }

  /** DATA with `message` (headers and body, as the client sends it after dot-unstuffing). */
  async data(message: Buffer): Promise<StepResult> {
    return this.#step('data', `DATA (${message.length} bytes)`, async () => {
      const session = this.#conn.session;
      if (!session.envelope.rcptTo.length) return { reply: '503 5.5.1 Error: need RCPT command', code: 503 };
      const st = this.state;
      const id = st.transactionId ?? Spool.prototype.newId.call(undefined);
      // The limits message-intake.ts applies while the message streams in.
      const headers = new HeaderReader(this.listener.limits.maxHeaderBytes, this.listener.limits.maxHeaderFields);
      if (message.length > this.#conn.maxMessageSize) return asLine(reply('messageTooBig'));
      // A first line that starts with a space or a tab: no header section (as message-intake.ts spools it).
      const clientBytes = message.length;
      if ((message[0] === 0x20 || message[0] === 0x09) && headers.push(Buffer.from('\r\n'))) message = Buffer.concat([Buffer.from('\r\n'), message]);
      if (!headers.push(message)) return asLine(headerRefusal(headers, this.listener.limits));
      const loop = hopLimitRefusal(headers.received);
      if (loop) return asLine(loop);
      // The body as the script's ctx.message.text() reads it: after the empty line that ends the header section.
      const bodyAt = headers.sectionBytes < 0 ? message.length : headers.bodyAt(message[headers.sectionBytes]);
      const { reply: decided, hold } = await this.#policy.data(this.#conn, session, id, clientBytes, () => headers.headers(), (max) => message.subarray(bodyAt, bodyAt + max));
      const line = asLine(decided ?? reply('queued', { id }));
      // A hold comes only with an accept (verdict.ts): the 250 is the client's, the message waits in the queue.
      const held = hold && line.code < 400 ? hold : undefined;
      this.#predelivery = { id, size: message.length, sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '', recipients: session.envelope.rcptTo.map((r) => r.address), ...(held ? { held } : {}) };
      st.transactionId = null;
      this.#conn.commands.endTransaction();
      return held ? { ...line, held } : line;
    });
  }

  /**
   * The predelivery hook for the message of the last DATA (or the envelope given), as the queue runner
   * would call it at a first attempt. The destination is the configured default route; for MX routing
   * the domain stands in for its MX host (try makes no DNS queries).
   */
  async predelivery(envelope?: { sender: string; recipients: string[]; size?: number }): Promise<StepResult> {
    // The envelope's own `size: undefined` (no --message given) must not cover the 0: ctx.message.size is a number.
    const message = envelope ? { ...envelope, id: Spool.prototype.newId.call(undefined), size: envelope.size ?? 0 } : this.#predelivery;
    if (!message || !message.recipients.length) {
      return this.#step('predelivery', 'predelivery', async () => ({ reply: '503 5.5.1 Error: no message was accepted, nothing to deliver', code: 503 }));
    }
    const domain = message.recipients[0]!.slice(message.recipients[0]!.lastIndexOf('@') + 1).toLowerCase();
    const route = this.built.generation.config.delivery.route;
    const destination: PredeliveryContext['destination'] = 'smarthost' in route
      ? { host: route.smarthost.host, port: route.smarthost.port, implicitTls: route.smarthost.implicitTls, domain, kind: 'smarthost' }
      : { host: domain, port: route.port, implicitTls: false, domain, kind: 'mx' };
    const ctx: PredeliveryContext = {
      message: { id: message.id, sender: message.sender, recipients: message.recipients.filter((r) => r.toLowerCase().endsWith(`@${domain}`)), size: message.size, attempt: 1, previousErrors: [], receivedAt: new Date().toISOString() },
      destination,
      session: spooledSession(this.#conn),
    };
    const held = 'held' in message ? message.held : undefined;
    return this.#step('predelivery', `predelivery of ${message.id} to ${domain}`, async () => {
      const decision = await runPredelivery(this.built.generation, ctx, this.#logger);
      let line: { reply: string; code: number };
      if (decision.action === 'deliver') {
        const host = decision.host ?? destination.host;
        const port = decision.port ?? destination.port;
        line = { reply: `deliver to ${host}:${port}${decision.implicitTls ?? destination.implicitTls ? ' (implicit TLS)' : ''}${Object.keys(decision.tls).length ? ` tls=${JSON.stringify(decision.tls)}` : ''}`, code: 250 };
      } else {
        line = { reply: decision.failure.message, code: decision.action === 'reject' ? 550 : 450 };
      }
      if (!held) return line;
      // A held message is not attempted (the queue runner skips it) until `postern queue release`: nothing is delivered
      // now. The hook's decision is what its first attempt after the release would do.
      const then = line.code < 400 ? line.reply : `${decision.action} (${line.reply})`;
      return { reply: `on hold, not delivered until postern queue release ${message.id}; once released: ${then}`, code: 250, held };
    });
  }

  async close(): Promise<void> {
    this.#stopObserving();
    this.#handshake?.close();
    this.#conn.state.generation.release();
    await this.built.generation.dispose();
  }
}

/** The connection the session policy decides about: what PosternConnection would provide, from the facts. */
class TryConnection implements SmtpClient {
  readonly id = randomBytes(8).toString('hex');
  readonly remoteAddress: string;
  readonly clientHostname: string;
  secure = false;
  readonly session: SMTPServerSession;
  readonly state: ConnectionState;
  _socket: TLSSocket = null as unknown as TLSSocket;
  readonly trust: SmtpClient['trust'];
  readonly maxMessageSize: number;
  /** MAIL FROM and RCPT TO through smtp-server's own checks, on this session. */
  readonly commands: AddressCommands;

  constructor(generation: ConnectionState['generation'], listener: ListenerConfig, facts: TryFacts, trust: SmtpClient['trust'], options: SMTPServerOptions) {
    const size = (options as { size?: number }).size;
    // As a listener names the client (--ip ::FFFF:127.0.0.1 is 127.0.0.1): scripts see here what they see live.
    this.remoteAddress = canonicalIp(facts.ip ?? '127.0.0.1');
    this.clientHostname = `[${this.remoteAddress}]`;
    this.state = new ConnectionState(generation, listener);
    this.trust = trust;
    this.maxMessageSize = size ?? Infinity;
    const [host, port] = splitListen(listener.listen);
    this.session = {
      id: this.id, remoteAddress: this.remoteAddress, remotePort: facts.port ?? 50000, localAddress: host, localPort: port,
      clientHostname: this.clientHostname, openingCommand: '', hostNameAppearsAs: '', secure: false, tlsOptions: false, servername: '',
      envelope: freshEnvelope(options), transmissionType: 'ESMTP', transaction: 1,
    } as unknown as SMTPServerSession;
    this.commands = new AddressCommands(options, this.session, () => this.secure, generation.config, listener.limits.maxRecipients);
  }

  decide(_stage: string, decided: SmtpReply | null): SmtpReply | null { return decided?.refuses ? decided : null; }
}

function splitListen(listen: string): [string, number] {
  const sep = listen.lastIndexOf(':');
  return [listen.slice(0, sep).replace(/^\[|\]$/g, ''), Number(listen.slice(sep + 1))];
}

/**
 * smtp-server's judgement of a HELO/EHLO name (smtp-connection.js isAcceptableHeloHostname), which the listener leaves
 * to it: at most 300 characters, no C0 or C1 control character. test/try/listener-parity holds the two together.
 */
function acceptableHeloName(name: string): boolean {
  // eslint-disable-next-line no-control-regex
  return name.length <= 300 && !/[\x00-\x1f\x7f-\x9f]/.test(name);
}

function asLine(r: SmtpReply): { reply: string; code: number } {
  return { reply: `${r.responseCode} ${r.message}`, code: r.responseCode };
}



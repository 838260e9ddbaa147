/**
 * One policy service: serves the connections of Postfix's smtpd processes (each keeps one open and asks
 * one request at a time; requests of many connections run at once). A request is decided with the
 * current generation's scripts, tables and service settings (hot reload), through the same sandbox call
 * path as the SMTP listeners (run-hook.ts). Nothing a client sends can stop the service: a malformed
 * request is answered MALFORMED_ACTION, a broken limit ends that connection after the failure action.
 */
import type { Socket } from 'node:net';
import type { PolicyServiceConfig } from '../config/schema.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import { clientText, type Logger } from '../logging/logger.ts';
import type { HookName, Verdict } from '../sandbox/api/index.ts';
import { runHook } from '../policy/run-hook.ts';
import { metrics } from '../metrics/metrics.ts';
import { RequestReader, answerBuffer, formatAnswer, type PolicyRequest } from './protocol.ts';
import { FactsMemo, requestContext, sameSpellingOfAddresses, type RequestContext } from './request-context.ts';
import { EARLIER_HOOKS, EARLIER_OF_HOOKLESS_STATE, StageVerdicts, stageInstance, stageKey } from './earlier-stages.ts';
import { fingerprintDigestMismatch } from './postfix-certificate.ts';
import { unreadableAddressRefusal } from './envelope-addresses.ts';
import { DUNNO, MALFORMED_ACTION, policyAction, type PolicyAction } from './actions.ts';
import { firstToClose, nextProgress } from '../connection-limits/closing-order.ts';
import { idleAfterReads } from '../timing/idle-after-reads.ts';

/**
 * Requests read ahead of their answers on one connection (Postfix sends one at a time, of about 1 KB): at most
 * this many, and no more once they weigh this many characters. Counting alone let a client queue 32 requests
 * of maxAttributes × maxLineBytes (50 MB by default) behind a slow one. The request being decided is always
 * taken, whatever its size (the limits bound it); text not parsed yet stays text (one chunk at most).
 */
const MAX_QUEUED = 32;
const MAX_QUEUED_CHARS = 64 * 1024;

/** The protocol_state values Postfix sends (SMTPD_POLICY_README), and `UNKNOWN` for a request without one. */
const POSTFIX_STATES: ReadonlySet<string> = new Set(['CONNECT', 'EHLO', 'HELO', 'MAIL', 'RCPT', 'DATA', 'END-OF-MESSAGE', 'VRFY', 'ETRN', 'UNKNOWN']);

export interface PolicyRuntime {
  /** The generation new requests take (swapped on reload). */
  readonly generation: PolicyGeneration;
  readonly logger: Logger;
}

let nextConnection = 0;

/** What makes a connection the one to close for a new one over limits.maxConnections (see #makeRoom). */
interface Slot {
  /** When it last made progress (accepted, a request read whole, an answer written): a sequence number. */
  progress: number;
  /** A request read and not yet answered. */
  answering(): boolean;
  /** Accepted in this turn of the event loop or the next: what it sent with its connect is not read yet. */
  fresh: boolean;
  /** A request was read whole on it. */
  advanced: boolean;
}

export class PolicyServer {
  readonly name: string;
  readonly #runtime: PolicyRuntime;
  /** The settings the service was started with: its socket, and the fallback if a reload drops the entry. */
  readonly #started: PolicyServiceConfig;
  readonly #sockets = new Set<Socket>();
  readonly #slots = new Map<Socket, Slot>();
  /** An episode over maxConnections was logged (until the count is back under). */
  #overReported = false;
  /** The digest mismatches warned about (once each per process: Postfix repeats them in every request). */
  readonly #digestWarnings = new Set<string>();

  constructor(runtime: PolicyRuntime, service: PolicyServiceConfig) {
    this.name = service.name;
    this.#runtime = runtime;
    this.#started = service;
  }

  get connections(): number { return this.#sockets.size; }

  /** The settings in force: the current generation's entry of this name. */
  #service(generation: PolicyGeneration): PolicyServiceConfig {
    return generation.config.policyServices.find((s) => s.name === this.name) ?? this.#started;
  }

  /**
   * Serve one accepted connection (from this process's listener, or handed over by the supervisor).
   * `open`: the service's open connections over every worker, this one included, as the supervisor counted
   * them when it handed it over (`postern serve`); else this process's own count decides.
   */
  handle(socket: Socket, open = this.#sockets.size + 1): void {
    const service = this.#service(this.#runtime.generation);
    const log = this.#runtime.logger;
    const cid = `P${process.pid.toString(36)}${(nextConnection++).toString(36)}`;
    if (open > service.limits.maxConnections && !this.#makeRoom(service.limits.maxConnections, cid)) {
      log.warn({ service: this.name, cid, limit: service.limits.maxConnections }, 'policy service: too many connections, closed');
      socket.destroy();
      return;
    }
    if (open < service.limits.maxConnections) this.#overReported = false;
    this.#sockets.add(socket);
    metrics.policyConnections.inc({ service: this.name });
    socket.on('close', () => {
      this.#sockets.delete(socket);
      this.#slots.delete(socket);
    });
    socket.on('error', (err) => log.info({ service: this.name, cid, err: { message: err.message } }, 'policy connection error'));
    // A client that half-closes after its requests (a script, `nc -N`) still gets every answer: with Node's
    // default the socket ended its side at the client's FIN, and answers not yet decided were dropped.
    socket.allowHalfOpen = true;
    socket.setEncoding('utf8');
    socket.setNoDelay(true);
    // Idle judged after the sockets are read: a server that gets the CPU back late (a loaded machine) runs its timers
    // before it reads them, and a request that had come in time was cut unread (Postfix deferred the mail it asked
    // about). Bytes that came meanwhile restarted the socket's timer; the listener, run once, is added again.
    const idle = (): void => idleAfterReads(() => socket.bytesRead, () => {
      if (socket.destroyed) return;
      log.info({ service: this.name, cid }, 'policy connection idle: closed');
      socket.destroy();
    }, () => { if (!socket.destroyed) socket.setTimeout(service.limits.idleTimeoutMs, idle); });
    socket.setTimeout(service.limits.idleTimeoutMs, idle);
    const reader = new RequestReader(service.limits);
    const memo = new FactsMemo();
    const stages = new StageVerdicts();
    // This connection's requests in order: each answer is written as soon as it is decided, and the next
    // request starts then (a loop, not a promise chain: nothing allocated per request for the order).
    const queue: PolicyRequest[] = [];
    let queuedChars = 0;
    let draining: Promise<void> | null = null;
    let ending = false;
    const room = (): boolean => queue.length === 0 || (queue.length < MAX_QUEUED && queuedChars < MAX_QUEUED_CHARS);
    const slot: Slot = { progress: nextProgress(), answering: () => queue.length > 0, fresh: true, advanced: false };
    this.#slots.set(socket, slot);
    setImmediate(() => setImmediate(() => { slot.fresh = false; }));
    /** Resolves once every request read so far is answered. */
    const answered = (): Promise<void> => draining ?? Promise.resolve();
    // Parse what was read into requests while there is room for them; a broken limit answers what came
    // before, then the failure action, and closes.
    const take = (): void => {
      while (room()) {
        const request = reader.next();
        if (!request) break;
        queue.push(request);
        queuedChars += request.size;
        slot.progress = nextProgress();
        slot.advanced = true;
      }
      if (queue.length) draining ??= drain();
      const fatal = reader.fatal;
      if (fatal && !ending) {
        ending = true;
        socket.pause();
        void answered().then(() => {
          const current = this.#service(this.#runtime.generation);
          log.error({ service: this.name, cid, err: fatal }, `policy request refused: ${fatal}; connection closed`);
          metrics.policyRequests.inc({ service: this.name, state: 'unknown', action: 'malformed' });
          if (!socket.destroyed) socket.end(formatAnswer(current.failureAction));
        });
      }
    };
    // Read on only while there is room for more requests (take() has then parsed all the whole ones read)
    // and the answers written so far have left: a client that sends requests and never reads the answers,
    // or sends them behind a slow one, must not grow this process's memory.
    const flow = (): void => {
      if (socket.destroyed) return;
      if (!ending && room() && !socket.writableNeedDrain) socket.resume();
      else socket.pause();
    };
    socket.on('drain', flow);
    const drain = async (): Promise<void> => {
      try {
        while (queue.length) {
          if (socket.destroyed) { queue.length = 0; break; } // a closed connection's read-ahead requests are not decided
          const { action } = await this.#decide(queue[0]!, cid, memo, stages);
          queuedChars -= queue.shift()!.size;
          if (socket.destroyed) continue;
          socket.write(answerBuffer(action));
          slot.progress = nextProgress();
          take();
          if (socket.isPaused()) flow();
        }
      } finally {
        draining = null;
      }
    };
    socket.on('data', (chunk: string) => {
      reader.push(chunk);
      take();
      flow();
    });
    socket.on('end', () => {
      void answered().then(() => {
        if (reader.incomplete) log.info({ service: this.name, cid }, 'policy connection closed in the middle of a request');
        socket.end();
      });
    });
    socket.resume();
  }

  /**
   * Over maxConnections: close one of this process's connections for the new one, in the order of
   * closing-order.ts (silent ones first, then ones dripping a request, then idle ones, each the one that has gone
   * longest without progress); false when every one is being answered (or too new to have been read). Idle
   * connections, or ones dripping a request, opened again as idleTimeoutMs cut them, held every slot: any local
   * user kept Postfix's new connections out. A Postfix whose idle connection was closed connects again and sends
   * its request anew.
   */
  #makeRoom(limit: number, cid: string): boolean {
    const stalest = firstToClose(this.#slots, ([socket, slot]) =>
      slot.fresh || slot.answering() || socket.destroyed
        ? null
        : { advanced: slot.advanced, sentAnything: socket.bytesRead > 0, progress: slot.progress });
    if (!stalest) return false;
    if (!this.#overReported) {
      this.#overReported = true;
      this.#runtime.logger.warn({ service: this.name, cid, limit }, 'policy service: too many connections, the one idle longest closed for each new one');
    }
    this.#slots.delete(stalest[0]);
    stalest[0].destroy();
    return true;
  }

  /** A certificate Postfix described in another digest than the service's: said once, at warn. */
  #checkDigest(attributes: Record<string, string>, service: PolicyServiceConfig, cid: string): void {
    const why = fingerprintDigestMismatch(attributes, service.fingerprintDigest);
    if (!why || this.#digestWarnings.has(`${service.fingerprintDigest}\n${why}`)) return;
    this.#digestWarnings.add(`${service.fingerprintDigest}\n${why}`);
    this.#runtime.logger.warn({ service: this.name, cid, fingerprintDigest: service.fingerprintDigest }, `policy service ${this.name}: ${why}`);
  }

  /** The answer to one request; never throws (an internal error answers the failure action). */
  async #decide(request: PolicyRequest, cid: string, memo: FactsMemo, stages: StageVerdicts): Promise<PolicyAction> {
    const generation = this.#runtime.generation.acquire();
    const service = this.#service(generation);
    const log = this.#runtime.logger;
    sameSpellingOfAddresses(request.attributes);
    const state = (request.attributes.protocol_state ?? 'unknown').toUpperCase();
    let result: PolicyAction;
    /** The script whose verdict or failure refused, for the log line. */
    let script: string | undefined;
    try {
      const unreadable = request.malformed ? null : unreadableAddressRefusal(request.attributes);
      if (request.malformed) {
        log.error({ service: this.name, cid, err: request.malformed }, `malformed policy request: ${request.malformed}`);
        result = { action: MALFORMED_ACTION, kind: 'malformed', reason: 'malformed policy request' };
      } else if (unreadable) {
        result = unreadable; // as a listener refuses the command: no script sees the address
      } else {
        const rc = requestContext(request.attributes, service, generation, memo);
        if (rc && !rc.ctx.connection.clientCertificate && (request.attributes.ccert_fingerprint || request.attributes.ccert_pubkey_fingerprint)) this.#checkDigest(request.attributes, service, cid);
        // A state without a hook of its own (VRFY, ETRN) is still decided by the stages Postfix checks before it.
        const earlierHooks = rc ? EARLIER_HOOKS[rc.hook] : EARLIER_OF_HOOKLESS_STATE[state] ?? [];
        if (!rc && !earlierHooks.length) {
          result = DUNNO;
        } else {
          const a = request.attributes;
          // The connect, helo and mailfrom scripts decide first: Postfix may be asking for their restriction list.
          let hook: HookName | null = rc?.hook ?? null;
          let refused: PolicyAction | null = null;
          for (const earlier of earlierHooks) {
            if (!generation.sandboxFor(service).has(earlier)) continue;
            const verdict = await this.#verdictOf(generation, service, earlier, requestContext(a, service, generation, memo, earlier)!, a, cid, stages, true);
            if (verdict === undefined || verdict.verdict === 'accept') continue;
            hook = earlier;
            refused = policyAction(service, earlier, verdict, null, a.recipient ?? '', state, generation.config.unknownRecipientReply);
            break;
          }
          if (refused) {
            result = refused;
          } else if (rc) {
            const verdict = await this.#verdictOf(generation, service, rc.hook, rc, a, cid, stages, false);
            result = policyAction(service, rc.hook, verdict, rc.builtin, a.recipient ?? '', state, generation.config.unknownRecipientReply);
          } else {
            result = DUNNO;
          }
          if (hook && result.reason?.startsWith('script ')) script = generation.sandboxFor(service).scriptFile(hook);
          if (result.error) {
            // A verdict the script may return, but Postfix cannot be told: the script's failure, named like one.
            log.error({ service: this.name, cid, hook, script, err: result.error },
              `policy script ${hook} (${script}): verdict not answerable to Postfix: ${result.error}`);
          }
        }
      }
    } catch (err) {
      log.error({ service: this.name, cid, err }, 'policy service: internal error');
      result = { action: service.failureAction, kind: 'failure', reason: 'local error' };
    } finally {
      generation.release();
    }
    this.#counted(state, result.kind);
    const level = result.kind === 'dunno' || result.kind === 'ok' ? 'debug' : 'info';
    if (log.isLevelEnabled(level)) { // the fields are built only for a line that is written
      const a = request.attributes;
      // A refusal's line has the fields of a listener's decision line (decision, stage, reason, script), so one
      // query (`jq 'select(.decision)'`) finds the refusals of both.
      const refused = result.reason !== undefined;
      // What Postfix passes on is what its client sent (an SMTPUTF8 address may carry C1 controls or bidi
      // overrides), and any local client of the service may send anything: shown as clientText() shows it.
      const shown = (v: string | undefined) => v === undefined ? undefined : clientText(v);
      log[level]({
        service: this.name, cid, state: shown(state), client: shown(a.client_address), clientName: shown(a.client_name), sender: shown(a.sender), recipient: shown(a.recipient),
        queueId: shown(a.queue_id), ccert: shown(a.ccert_pubkey_fingerprint || a.ccert_fingerprint || undefined), action: result.action,
        ...(refused ? {
          decision: /^(5|REJECT)/i.test(result.action) ? 'reject' : 'defer', stage: shown(state), reason: result.reason,
          script,
        } : {}),
      }, 'policy answer');
    }
    return result;
  }

  /**
   * The verdict of `hook` on this request. For connect, helo and mailfrom it is kept for the later requests of the
   * same session (or transaction) on this connection, which take it as an earlier stage's (`earlierStage`), so
   * each runs once whichever states Postfix asks at; asked at its own state (a HELO, then an EHLO) it runs again,
   * as a listener runs it for each command.
   */
  async #verdictOf(
    generation: PolicyGeneration, service: PolicyServiceConfig, hook: HookName, rc: RequestContext, a: Record<string, string>,
    cid: string, stages: StageVerdicts, earlierStage: boolean,
  ): Promise<Verdict | undefined> {
    const kept = hook === 'connect' || hook === 'helo' || hook === 'mailfrom';
    const key = kept ? stageKey(hook, a) : '';
    const instance = kept ? stageInstance(hook, a) : null;
    const earlier = instance !== null && earlierStage ? stages.get(generation, hook, key, instance, a.instance) : null;
    if (earlier) return earlier.verdict;
    const verdict = await runHook(generation, service, hook, rc.ctx, cid, this.#runtime.logger, rc.key, 'postfix-policy') as Verdict | undefined;
    // Not kept (instance null): the port is unknown, and so would be whose session takes it; a kept one stays.
    if (instance !== null) stages.set(generation, hook, key, verdict, instance, a.instance);
    return verdict;
  }

  /**
   * prom-client hashes the labels on every inc(): keep one labelled child per (state, action). A state
   * Postfix does not define is counted as OTHER: a client's made-up states must not each become a series.
   */
  readonly #counters = new Map<string, { inc(): void }>();
  #counted(state: string, kind: string): void {
    const label = POSTFIX_STATES.has(state) ? state : 'OTHER';
    const key = `${label} ${kind}`;
    let counter = this.#counters.get(key);
    if (!counter) this.#counters.set(key, counter = metrics.policyRequests.labels(this.name, label, kind));
    counter.inc();
  }

  /** Close every connection (the listening socket is its owner's). */
  close(): void {
    for (const s of this.#sockets) s.destroy();
  }
}

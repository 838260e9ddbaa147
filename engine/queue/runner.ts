/**
 * The queue runner: delivers spooled messages when they are due, with bounded concurrency, and records
 * the outcome durably — delivered and bounced recipients in `<id>.state`, the message removed only once
 * every recipient was accepted by a next hop or bounced (the bounce itself spooled first).
 */
import { MAX_HOPS } from '../smtp/hop-limit.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import type { DeliveryConfig } from '../config/schema.ts';
import { Spool } from '../spool/spool.ts';
import { isUnconfirmed } from '../spool/sync-deadline.ts';
import type { QueueSpool } from '../cluster/spool-set.ts';
import type { SpoolEnvelope, SpoolRecipient, SpoolState } from '../spool/envelope.ts';
import type { PredeliveryContext } from '../sandbox/api/index.ts';
import type { Logger } from '../logging/logger.ts';
import { RepeatedFailure } from '../logging/repeated-failure.ts';
import { logQueueOperations } from './operations.ts';
import { ConnectionPool, STOP_VERDICT_WAIT_MS } from '../delivery/connection-pool.ts';
import { createResolver, type DeliveryResolver } from '../delivery/dns.ts';
import { ByteBudget } from './byte-budget.ts';
import { KeyedLimiter, Limiter } from '../delivery/limiter.ts';
import { OutboundTlsMaterial, type TlsPolicy } from '../delivery/outbound-tls.ts';
import { DeliveryFailure, outcomeForFailure, type RecipientOutcome } from '../delivery/outcome.ts';
import { hasPredelivery, runPredelivery, type PredeliveryDecision } from '../delivery/predelivery.ts';
import { defaultRoute, groupByDomain, type NextHop } from '../delivery/routing.ts';
import { deliverTransaction, type DeliveryPlan, type Transaction, type TransactionEnv } from '../delivery/transaction.ts';
import type { TransactionDsn } from '../delivery/dsn-params.ts';
import { chooseDkimKeys, crlfCopyBytes, DkimKeys } from '../delivery/dkim.ts';
import { linesWithinCopyBytes, withLinesWithin } from '../delivery/line-length.ts';
import { DestinationSuspensions } from '../delivery/suspensions.ts';
import { DueQueue } from './due-queue.ts';
import { isExpired, retryDelayMs } from './schedule.ts';
import { ClockSteps } from './clock-steps.ts';
import { ownListeners, type OwnAddress } from '../delivery/own-listeners.ts';
import { spoolBounce, spoolNoticeOnce, withdrawNoticesOfDeleted } from './bounce.ts';
import { statfs } from 'node:fs/promises';
import { timerDelay } from '../timing/timer-limit.ts';
import { isAscii } from 'node:buffer';
import { dirname } from 'node:path';
import { SetupWarnings } from '../reload/setup-warnings.ts';
import { isNoSpace, type SpoolReserve } from '../spool/reserve.ts';
import { headerOnlyNotice, type FailedRecipient } from './dsn.ts';

/** Errors kept per message for `previousErrors` and `postern queue show`. */
const MAX_ERRORS = 20;
/**
 * Failed attempts after which a deferred message leaves the journal for a file of its own (Spool.moveOutOfJournal),
 * so that the journal's segments, kept while any of their records is pending, are deleted with the mail delivered
 * around it. Not at the first: a greylisting next hop defers it. With the default schedule (attempts at 0, 60 s and
 * 360 s) a greylisting delay of 300 s (Postgrey's) defers the second attempt too, and the message is moved (a copy,
 * three syncs) before the third is taken: the price of not keeping an outage's segments some 3.5 times as long (at 3,
 * a message would move 21 minutes after it came instead of 6).
 */
const MOVE_OUT_OF_JOURNAL_AFTER = 2;
/**
 * How long after its start a stop waits for a disk that does not confirm writes, to record the outcomes kept in memory:
 * within the supervisor's 30 s before it kills a child that has not ended, with room to write them.
 */
const STOP_DISK_WAIT_MS = 20_000;


export interface QueueRunnerOptions {
  /** One spool, or every spool of the data folder (SpoolSet: one per worker process). */
  spool: QueueSpool;
  /** The generation new attempts run with (swapped on reload). */
  generation(): PolicyGeneration;
  logger: Logger;
  /** DNS for routing; default: node:dns per delivery.hostLookup / dnsServers. */
  resolver?: DeliveryResolver;
  /** The spool folder whose `postern queue` operations this runner logs (operations.ts); none: not logged here. */
  operationsRoot?: string;
}

/** What one attempt did, for tests and tools. */
export interface AttemptEvent {
  id: string;
  attempt: number;
  outcomes: RecipientOutcome[];
  /** The message left the spool (every recipient delivered or bounced). */
  removed: boolean;
  /** Id of the bounce spooled by this attempt, if any. */
  bounceId: string | null;
  nextAttemptAt: string | null;
}

/** `final`: outcomes settled without a transaction (predelivery verdict, unusable route, mail loop), and why. */
interface Group { recipients: string[]; plan: DeliveryPlan | null; final: RecipientOutcome[]; reason?: string }

export class QueueRunner {
  readonly #spool: QueueSpool;
  readonly #generation: () => PolicyGeneration;
  readonly #log: Logger;
  readonly #operationsRoot: string | null;
  readonly #injectedResolver: DeliveryResolver | undefined;
  #resolver: { key: string; resolver: DeliveryResolver } | null = null;
  readonly #due = new DueQueue();
  readonly #active = new Map<string, Promise<void>>();
  readonly #broken = new Set<string>();
  /**
   * Messages on hold (`postern queue hold`) as last seen: in the spool though not scheduled. A held notice left by a run
   * of an attempt that a crash cut off is one the rerun must find (#noticeSpool).
   */
  readonly #held = new Set<string>();
  /** Messages known to have no state file yet (never attempted): no need to look for one. */
  readonly #noState = new Set<string>();
  /** Bytes of the copy a message's rewriting for the wire makes, found at its read: taken with it at its next (see #attemptOnce). */
  readonly #rewriteBytes = new Map<string, number>();
  /** Spooled while a scan's directory listing was under way: not "vanished" if the listing missed them. */
  readonly #spooledDuringScan = new Set<string>();
  /** Attempted while a scan was under way: the scan's view of them may predate that attempt. */
  readonly #attemptedDuringScan = new Set<string>();
  /** Came due while an attempt of theirs was under way (its own retry, a scan's, an announcement's): due once it ends. */
  readonly #dueAfterAttempt = new Set<string>();
  /**
   * `postern queue retry|release` requests taken into the schedule, by message, with what the request file said (a
   * request written over it later is another one): 'next' until the attempt they made due is recorded, 'after' while
   * an attempt begun before the request is still under way (the request is for the one after it), 'removing' while
   * its file is being removed. Their files stay until then: a queue process killed in between finds them again at its
   * next start, instead of leaving the message to its recorded retry time (hours, perhaps) as removing them at the
   * scan did.
   */
  readonly #requestsTaken = new Map<string, { for: 'next' | 'after' | 'removing'; text: string }>();
  /**
   * Outcomes the spool could not record (a full disk): a recipient a next hop accepted is never sent to
   * again because its bookkeeping failed. Laid over the spooled state until a later try writes it.
   */
  readonly #unrecorded = new Map<string, SpoolState>();
  /**
   * Records under way (#record), by message: the attempt whose outcome is being written. Its notices are spooled first
   * and a scan may try one meanwhile; the disk cannot tell it that the record is durable: a state file renamed into
   * place counts the attempt before its folder's sync has returned (or failed).
   */
  readonly #recording = new Map<string, number>();
  /** Waiting for the disk to confirm writes again, to write #unrecorded then (#recordOnceDiskAnswers). */
  #awaitingDisk = false;
  readonly #pool = new ConnectionPool();
  readonly #material = new OutboundTlsMaterial();
  readonly #dkim = new DkimKeys();
  readonly #overall: Limiter;
  /** Bytes of large messages the attempts under way hold in memory (delivery.maxBytesInMemory). */
  readonly #inMemory: ByteBudget;
  readonly #perDestination: KeyedLimiter;
  readonly #suspensions = new DestinationSuspensions();
  /**
   * Messages set aside, by destination (`host:port`), because that destination had a full backlog when they
   * came to it (a slow next hop: RecipientOutcome.destinationBusy). Out of the due queue, so they hold no
   * attempt slot; let back in one by one as the destination gives back slots (#unpark).
   */
  readonly #parked = new Map<string, Set<string>>();
  readonly #parkedOn = new Map<string, string>();
  readonly #listeners = new Set<(e: AttemptEvent) => void>();
  #scanned = false;
  #scanning: Promise<void> | null = null;
  /** A scan fails at every try while its cause lasts (out of descriptors): logged once per episode. */
  readonly #scanFailures: RepeatedFailure;
  /** Reads of messages for their attempts failing at every try (EMFILE): once per episode, not per message per retry. */
  readonly #readFailures: RepeatedFailure;
  #rescanStamp = '';
  #scanTimer: NodeJS.Timeout | null = null;
  #wakeTimer: NodeJS.Timeout | null = null;
  #wakeAt = Infinity;
  #closing = false;
  #started = false;
  #lastSerial = -1;
  #materialRead: Promise<void> = Promise.resolve();
  /** The outbound files that could not be read, said when new (#preloadMaterial). */
  readonly #materialErrors = new SetupWarnings();
  readonly #clockSteps = new ClockSteps();
  #own: { serial: number; own: OwnAddress } | null = null;

  constructor(opts: QueueRunnerOptions) {
    this.#spool = opts.spool;
    this.#generation = opts.generation;
    this.#log = opts.logger.child({ component: 'queue' });
    this.#scanFailures = new RepeatedFailure(this.#log, 'spool scan failed', 'spool scan works again');
    this.#readFailures = new RepeatedFailure(this.#log, 'cannot read the spool file now: tried again later', 'reading spool files works again');
    this.#injectedResolver = opts.resolver;
    this.#operationsRoot = opts.operationsRoot ?? null;
    this.#overall = new Limiter(() => this.#delivery().concurrency);
    this.#inMemory = new ByteBudget(() => this.#delivery().maxBytesInMemory);
    this.#perDestination = new KeyedLimiter(() => this.#delivery().perDestinationConcurrency, (destination) => this.#unpark(destination));
  }

  #delivery(): DeliveryConfig { return this.#generation().config.delivery; }

  /** A step forward of the wall clock, logged once; the messages queued before it do not age by it. */
  #noticeClockSteps(): void {
    const step = this.#clockSteps.observe();
    if (step) {
      this.#log.warn({ seconds: Math.round(step.ms / 1000) },
        `the wall clock jumped forward by ${Math.round(step.ms / 1000)} s: that time does not count toward delivery.maxAgeHours of the mail queued before it`);
    }
  }

  /** Scan the spool now and then every delivery.scanIntervalMs. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#keepReserve();
    if (!this.#delivery().enabled) this.#log.info('delivery disabled (no delivery section, or delivery.enabled: false): accepted mail stays in the spool');
    const tick = (): void => {
      void this.scan().finally(() => {
        if (this.#closing) return;
        this.#scanTimer = setTimeout(tick, this.#delivery().scanIntervalMs);
        this.#scanTimer.unref();
      });
    };
    tick();
  }

  /** A message was just committed to the spool: deliver it as soon as a slot is free. */
  notify(id: string): void {
    if (this.#closing || !this.#started || !this.#delivery().enabled) return;
    // A message known already stays as it is: a worker's announcement reaches the queue process up to a batch later,
    // after a scan may have found the message and an attempt recorded a state for it; taken for new, its next attempt
    // read it without that state and sent to the recipients delivered before again (and its removal left the state).
    if (!this.#knows(id)) {
      this.#due.set(id, this.#dueAt(Date.now()), 'new');
      this.#noState.add(id);
      if (this.#scanning) this.#spooledDuringScan.add(id);
    }
    this.#kick();
  }

  /**
   * The spool as spoolBounce sees it. A notice an earlier run of an attempt spooled before a crash cut off its record
   * was in the spool when this process's first scan ran, and that scan took it in hand; so once it is done, a notice
   * the runner does not have is not there (nor on hold: #held), and the disk is not asked: every recorded attempt looks for its failure
   * and success notices, and a stat() of a missing file cost about 20–45 µs of CPU each (its ENOENT error made).
   */
  readonly #noticeSpool: Pick<QueueSpool, 'create' | 'hasNotice' | 'readEnvelope' | 'updateState'> = {
    create: (...args) => this.#spool.create(...args),
    hasNotice: (id) => (this.#scanned && !this.#knows(id) && !this.#held.has(id) ? Promise.resolve(false) : this.#spool.hasNotice(id)),
    readEnvelope: (...args) => this.#spool.readEnvelope(...args),
    updateState: (...args) => this.#spool.updateState(...args),
  };

  /** Whether the runner has `id` in hand: under way, scheduled, set aside, or held back. */
  #knows(id: string): boolean {
    return this.#active.has(id) || this.#due.has(id) || this.#parkedOn.has(id) || this.#broken.has(id) || this.#unrecorded.has(id);
  }

  /** A reload swapped the generation: delivery may have been switched on or off, or limits changed. */
  reconfigured(): void {
    if (!this.#started || this.#closing) return;
    this.#suspensions.clear(); // a changed route, TLS setting or certificate may reach what could not be reached
    // Higher limits let in now what waits for a slot or for room (not once a slot held at a slow next hop is given back).
    this.#overall.limitChanged();
    this.#perDestination.limitChanged();
    this.#inMemory.limitChanged();
    void this.scan().then(() => this.#kick());
  }

  /** Called after every attempt; returns an unsubscribe function. */
  onAttempt(fn: (e: AttemptEvent) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  get activeCount(): number { return this.#active.size; }
  get queuedCount(): number { return this.#due.size + this.#parkedOn.size; }
  /** Messages set aside until their destination has room (a slow next hop's backlog). */
  get parkedCount(): number { return this.#parkedOn.size; }

  /** Re-read the spool: new messages, vanished ones, holds, and every state after `postern queue retry|release`. */
  scan(): Promise<void> {
    this.#scanning ??= this.#scanOnce().then(() => this.#scanFailures.succeeded(), (err: unknown) => {
      this.#scanFailures.failed(err);
    }).finally(() => { this.#scanning = null; });
    return this.#scanning;
  }

  async #scanOnce(): Promise<void> {
    if (this.#closing) return;
    this.#noticeClockSteps();
    this.#keepReserve();
    // Delivery on or off, what `postern queue` did is logged (who, what).
    if (this.#operationsRoot) await logQueueOperations(this.#operationsRoot, this.#log);
    const delivery = this.#delivery();
    if (!delivery.enabled) {
      if (this.#scanned) this.#log.info('delivery disabled (no delivery section, or delivery.enabled: false): accepted mail stays in the spool');
      this.#due.clear();
      this.#parked.clear();
      this.#parkedOn.clear();
      this.#scanned = false;
      return;
    }
    this.#preloadMaterial();
    this.#spooledDuringScan.clear();
    this.#attemptedDuringScan.clear();
    const entries = await this.#spool.scan();
    const present = new Set([...entries.map((e) => e.id), ...this.#spooledDuringScan]);
    this.#spooledDuringScan.clear();
    for (const id of [...this.#due.ids()]) if (!present.has(id)) this.#due.delete(id);
    for (const id of [...this.#parkedOn.keys()]) if (!present.has(id)) this.#unparkOne(id, false);
    for (const id of this.#broken) if (!present.has(id)) this.#broken.delete(id);
    for (const id of this.#held) if (!present.has(id)) this.#held.delete(id);
    for (const id of this.#noState) if (!present.has(id) && !this.#active.has(id)) this.#noState.delete(id);
    for (const id of this.#requestsTaken.keys()) if (!present.has(id) && !this.#active.has(id)) this.#requestsTaken.delete(id);
    const stamp = await this.#spool.rescanStamp();
    const full = !this.#scanned || stamp !== this.#rescanStamp;
    this.#rescanStamp = stamp;
    if (full) this.#broken.clear(); // `postern queue retry` may have repaired them: read them again
    if (full && this.#scanned) this.#suspensions.clear(); // and retry means now, suspended destinations too
    if (full) for (const id of [...this.#parkedOn.keys()]) this.#unparkOne(id, false); // read again below, due as their state says
    if (!this.#scanned) this.#log.info({ messages: entries.length }, 'queue runner started');
    let read = 0;
    for (const { id, hasState, held, dueRequested } of entries) {
      if (this.#closing) return;
      if (held) { // `postern queue hold`: until `queue release`
        // Said once, as an attempt passing it over says it: when it leaves the schedule.
        if (this.#due.has(id) || this.#parkedOn.has(id)) this.#log.info({ id, held: true }, `${id}: on hold, not attempted until released (postern queue release ${id})`);
        this.#due.delete(id); this.#unparkOne(id, false); this.#requestsTaken.delete(id); this.#held.add(id);
        continue;
      }
      this.#held.delete(id);
      if (dueRequested && !this.#broken.has(id)) {
        // Taken and still scheduled: its file goes once that attempt is recorded (#requestDone). Taken but no longer
        // scheduled (its read failed, it was found broken and repaired since): taken again.
        // Done, its file being removed: not a request again (a second attempt at once).
        const taken = this.#requestsTaken.get(id);
        if (taken && (taken.for === 'removing' || this.#due.has(id) || this.#active.has(id) || this.#parkedOn.has(id))) continue;
        // What the request says (when it was made): one written over it later is another request (#requestDone).
        const text = await this.#spool.readDueRequest(id).catch(() => null);
        if (text === null) continue; // gone meanwhile (delivered, deleted), or unreadable: seen again at the next scan
        // `postern queue retry|release`: due now (once its attempt under way ends), its state as the runner wrote it.
        if (this.#active.has(id)) this.#dueAfterAttempt.add(id);
        else if (this.#parkedOn.has(id)) this.#unparkOne(id, true);
        else this.#due.set(id, this.#dueAt(Date.now()), hasState ? 'retry' : 'new');
        this.#requestsTaken.set(id, { for: this.#active.has(id) ? 'after' : 'next', text });
        if (hasState) this.#noState.delete(id); // (none in the listing is not a claim: an attempt may have recorded one since)
        continue;
      }
      if (this.#active.has(id) || this.#broken.has(id) || this.#attemptedDuringScan.has(id) || this.#parkedOn.has(id) || (!full && this.#due.has(id))) continue;
      // Never attempted: due since it was accepted; no need to open anything.
      if (!hasState) {
        this.#due.set(id, this.#dueAt(Spool.idTime(id), 0), 'new');
        this.#noState.add(id);
        continue;
      }
      this.#noState.delete(id);
      try {
        const state = await this.#spool.readState(id);
        if (this.#active.has(id)) continue;
        const at = state ? Date.parse(state.nextAttemptAt) : Spool.idTime(id);
        this.#due.set(id, this.#dueAt(Number.isFinite(at) ? at : Date.now(), state ? retryDelayMs(delivery, state.attempts) : 0));
      } catch (err) {
        if (isSystemError(err)) {
          // Out of file descriptors, an I/O error: the file is not known to be bad. Tried again later.
          this.#due.set(id, this.#dueAt(Date.now() + retryDelayMs(delivery, 1)));
          this.#log.error({ id, err: (err as Error).message }, 'cannot read the delivery state now: tried again later');
        } else {
          this.#broken.add(id);
          this.#log.error({ id, err: (err as Error).message }, 'unreadable delivery state: not delivering it');
        }
      }
      // A long queue: start delivering what is known while the rest is read.
      if (++read % 256 === 0) this.#kick();
    }
    this.#scanned = true;
    this.#attemptedDuringScan.clear();
    // A destination that took fewer back than it gave room for (a message let back in that had gone elsewhere by then).
    for (const destination of [...this.#parked.keys()]) if (!this.#perDestination.backlogged(destination)) this.#unpark(destination);
    this.#kick();
  }

  /**
   * Set a message aside until `destination`, whose slots and waiting line are full, gives back a slot. Its
   * attempt is not counted and nothing is recorded: nothing was tried.
   */
  #park(id: string, destination: string): void {
    if (this.#closing) return; // the next start reads it from the spool
    let ids = this.#parked.get(destination);
    if (!ids) this.#parked.set(destination, ids = new Set());
    ids.add(id);
    this.#parkedOn.set(id, destination);
    // The destination gave back slots between its refusal and now: no release is coming for this one.
    if (!this.#perDestination.backlogged(destination)) this.#unpark(destination);
  }

  /**
   * `destination` gave back a slot: let in as many of the messages set aside for it as its waiting line has
   * room for (one, once it is going: each slot given back takes one waiter), oldest first. All of them when it
   * is suspended: each is deferred at once without a slot, so none would be given back to let in the next.
   */
  #unpark(destination: string): void {
    const ids = this.#parked.get(destination);
    if (!ids) return;
    const limit = this.#delivery().perDestinationConcurrency;
    let n = this.#suspensions.failure(destination) ? ids.size : Math.max(1, limit - this.#perDestination.waiting(destination));
    for (const id of ids) {
      if (n-- <= 0) break;
      this.#unparkOne(id, true);
    }
    this.#kick();
  }

  /** Take `id` out of the set-aside messages; `due`: due now. */
  #unparkOne(id: string, due: boolean): void {
    const destination = this.#parkedOn.get(id);
    if (destination === undefined) return;
    this.#parkedOn.delete(id);
    const ids = this.#parked.get(destination)!;
    ids.delete(id);
    if (!ids.size) this.#parked.delete(destination);
    if (due && !this.#closing) this.#due.set(id, this.#dueAt(Date.now()));
  }

  /**
   * Keep the spool's reserve (engine/spool/reserve.ts): made at start, and again once there is room after a
   * full disk made the runner use it. Off the scan's path: the write goes to the thread pool.
   */
  #keepReserve(): void {
    const reserve = this.#spool.reserve;
    const state = reserve.state;
    if (state === 'kept') return;
    const floor = this.#generation().config.spool.minFreeBytes;
    this.#reserving = statfs(dirname(reserve.path))
      .then((fs) => reserve.keep(fs.bavail * fs.bsize, floor))
      .then((made) => {
        if (made) this.#reserveError = null;
        if (made && state === 'released') this.#log.warn({ reserve: reserve.path }, 'spool: there is room again and the reserve is kept again: new mail is taken again');
      }, (err: unknown) => {
        // Tried at every scan: said once per cause (no inode free, a file size limit below it, a read-only disk), not every few seconds.
        const message = (err as Error).message;
        if (message === this.#reserveError) return;
        this.#reserveError = message;
        this.#log.warn({ reserve: reserve.path, err: message }, 'spool: the reserve for the queue\'s bookkeeping could not be made');
      });
  }

  /**
   * Whether the disk has room for the copy a move out of the journal makes (the journal's room comes back only once
   * every record of the message's segment is done, which an outage may keep for days). Not while the reserve is
   * released: its room is for the outcomes of the attempts, and a few moves of large messages took it all, the
   * delivered ones then not recorded, to be delivered again; nor when the copy would leave less than the floor plus
   * twice the reserve (where the reserve is made again). The message stays in the journal, moved at a later deferral.
   */
  async #roomToMove(bytes: number): Promise<boolean> {
    const reserve = this.#spool.reserve;
    if (reserve.state === 'released') return false;
    const fs = await statfs(dirname(reserve.path));
    return fs.bavail * fs.bsize - bytes >= this.#generation().config.spool.minFreeBytes + 2 * reserve.bytes;
  }

  /** Why the reserve could not be made, as last logged (null: made, or not tried yet). */
  #reserveError: string | null = null;

  /** The reserve being made (#keepReserve): close() waits for it, so nothing is written in the spool after it. */
  #reserving: Promise<void> = Promise.resolve();

  /**
   * The disk is full: release the reserve so that outcomes can be recorded and finished segments go. False: none
   * left, or the filesystem is out of inodes, not bytes (the reserve, which frees bytes, is kept: reserve.ts).
   */
  #useReserve(): boolean {
    let used: ReturnType<SpoolReserve['useOnNoSpace']>;
    try {
      used = this.#spool.reserve.useOnNoSpace();
    } catch (err) {
      this.#log.error({ reserve: this.#spool.reserve.path, err: (err as Error).message }, 'spool: the disk is full and the reserve cannot be released');
      return false;
    }
    if (used === 'inodes') {
      this.#log.error({ reserve: this.#spool.reserve.path },
        'spool: the filesystem is out of inodes (files), not bytes: outcomes that need a new file wait in memory; the reserve frees bytes, not inodes, and is kept; delete files on that filesystem (spool.minFreeInodes refuses new mail before this)');
      return false;
    }
    const released = used === 'released';
    if (released) {
      this.#log.error({ reserve: this.#spool.reserve.path, bytes: this.#spool.reserve.bytes },
        'spool: the disk is full: the reserve is released for the queue\'s bookkeeping; new mail is refused (452 4.3.1) until there is room again');
    }
    return released;
  }

  /**
   * After a reload, read the outbound certificates once so a broken rotation is logged right away: a file the build
   * read but that cannot be read now (replaced since), said when new (setup-warnings.ts), not at every reload. What
   * a usable file is worth a look for (expiring, not a CA) the build says, once for the server, at its key's line:
   * said here too, it was logged again at every reload.
   */
  #preloadMaterial(): void {
    const gen = this.#generation();
    if (gen.serial === this.#lastSerial) return;
    this.#lastSerial = gen.serial;
    this.#materialRead = this.#material.preload(gen.config.delivery, gen).then((report) => {
      for (const w of this.#materialErrors.took(report.errors.map((message) => ({ message })))) this.#log.error({ generation: gen.serial }, `outbound TLS material: ${w.message}`);
    });
  }

  /** Settles once the outbound files of the last generation scanned with were read and what they hold said. */
  get materialRead(): Promise<void> { return this.#materialRead; }

  /** Start due attempts while there is room; otherwise wake up when the next one is due. */
  #kick(): void {
    if (this.#closing) return;
    const delivery = this.#delivery();
    if (!delivery.enabled) return;
    const maxActive = Math.max(2, delivery.concurrency * 2);
    const now = performance.now();
    while (this.#active.size < maxActive) {
      const id = this.#due.takeDue(now);
      if (!id) break;
      // Not a second attempt at once; nor dropped, or it would wait for the next scan (a retry due before its attempt's
      // end, a deferral's move out of the journal under way).
      if (this.#active.has(id)) { this.#dueAfterAttempt.add(id); continue; }
      const run = this.#attempt(id)
        .catch((err: unknown) => {
          this.#log.error({ id, err }, 'delivery attempt failed');
          if (isUnconfirmed(err) && this.#unrecorded.has(id)) this.#recordOnceDiskAnswers();
          const now = isNoSpace(err) && this.#useReserve() ? 0 : retryDelayMs(this.#delivery(), 1);
          if (!this.#closing) this.#due.set(id, this.#dueAt(Date.now() + now));
        })
        .then((busy) => {
          this.#active.delete(id);
          // A request taken during the attempt asks for one after it, now: not at the retry time this attempt recorded.
          const requested = this.#attemptBeforeRequestEnded(id);
          if (this.#dueAfterAttempt.delete(id) && (requested || !this.#due.has(id)) && !busy && !this.#closing) this.#due.set(id, this.#dueAt(Date.now()));
          if (this.#scanning) this.#attemptedDuringScan.add(id);
          if (busy) this.#park(id, busy); // once it is no longer under way: let back in, it is taken again
          this.#kick();
        });
      this.#active.set(id, run);
    }
    const next = this.#due.peek();
    if (next && this.#active.size < maxActive) this.#wakeAtTime(next.time);
  }

  /**
   * An attempt of `id` has recorded its outcome. The due request it was made for, if any, is done: its file goes;
   * one taken while the attempt was under way is for the next.
   */
  #requestDone(id: string): void {
    const taken = this.#requestsTaken.get(id);
    if (taken?.for !== 'next') return; // 'after': for the attempt after this one (#attemptBeforeRequestEnded)
    // Kept (as being removed) until its file is gone: a scan meanwhile would take it again.
    taken.for = 'removing';
    // Only that request: one written over it since (a retry during this attempt) asks for an attempt after this one,
    // and the next scan takes it. Removed with this one's, it was lost: the message waited for its retry time.
    void this.#spool.clearDueRequest(id, taken.text)
      .catch((err: unknown) => this.#log.warn({ id, err: (err as Error).message }, 'cannot remove the due request of postern queue retry|release: an attempt is made again at the next start'))
      .finally(() => { if (this.#requestsTaken.get(id) === taken) this.#requestsTaken.delete(id); });
  }

  /**
   * An attempt of `id` has ended, however (recorded, set aside for a busy destination, cut short): a due request taken
   * while it was under way ('after') is for the next attempt, which is to be made now; true then. (Flipped only at
   * the record, a deferral's retry time stood: a `postern queue retry` made during a scheduled attempt waited for it.)
   */
  #attemptBeforeRequestEnded(id: string): boolean {
    const taken = this.#requestsTaken.get(id);
    if (taken?.for !== 'after') return false;
    taken.for = 'next';
    return true;
  }

  /**
   * A wall-clock time (as the spool records it) as a due time on the monotonic clock, which the queue
   * keeps: a step of the wall clock then neither holds back nor hurries what is already scheduled. A time
   * more than `furthest` ms ahead (the retry step that set it; 0 for a message never attempted, due since it
   * was accepted) can only come from a clock that was set back since it was written: it is due after
   * `furthest`, not when the clock catches up. (Capped at the longest retry step instead, a restart after the
   * clock was set back held every message, new ones too, for up to that step: 4 hours by default.)
   * Past times stay in the past, in their order (oldest first).
   */
  #dueAt(wallTime: number, furthest = Math.max(...this.#delivery().retrySchedule) * 1000): number {
    return performance.now() + Math.min(wallTime - Date.now(), furthest);
  }

  #wakeAtTime(time: number): void {
    if (this.#wakeTimer && time >= this.#wakeAt) return;
    if (this.#wakeTimer) clearTimeout(this.#wakeTimer);
    this.#wakeAt = time;
    this.#wakeTimer = setTimeout(() => {
      this.#wakeTimer = null;
      this.#wakeAt = Infinity;
      this.#kick();
    }, timerDelay(time - performance.now()));
    this.#wakeTimer.unref();
  }

  /** The generation's listeners, as next hops that would be ourselves (a mail loop). */
  #ownListeners(gen: PolicyGeneration): OwnAddress {
    if (this.#own?.serial !== gen.serial) this.#own = { serial: gen.serial, own: ownListeners(gen.config.listeners.map((l) => l.listen)) };
    return this.#own.own;
  }

  #resolverFor(delivery: DeliveryConfig): DeliveryResolver {
    if (this.#injectedResolver) return this.#injectedResolver;
    const key = JSON.stringify([delivery.hostLookup, delivery.dnsServers]);
    if (this.#resolver?.key !== key) {
      this.#resolver = { key, resolver: createResolver({ hostLookup: delivery.hostLookup, servers: delivery.dnsServers }) };
    }
    return this.#resolver.resolver;
  }

  /** One attempt; returns the destination to set the message aside for when its backlog was full and nothing was tried. */
  async #attempt(id: string): Promise<string | void> {
    try {
      for (;;) {
        const r = await this.#attemptOnce(id);
        if (r !== READ_AGAIN) return r;
      }
    } finally {
      this.#rewriteBytes.delete(id);
    }
  }

  /** #attempt's work; READ_AGAIN: its message needs more memory than it took, and is read again once that fits. */
  async #attemptOnce(id: string): Promise<string | void | typeof READ_AGAIN> {
    if (this.#scanning) this.#attemptedDuringScan.add(id);
    // Held since it was scheduled: no attempt until `postern queue release` (its rescan schedules it again).
    if (await this.#spool.isHeld(id)) {
      this.#held.add(id);
      this.#log.info({ id, held: true }, `${id}: on hold, not attempted until released (postern queue release ${id})`);
      return;
    }
    // Read whole below: a large message waits until it fits in what attempts may hold in memory together, with the
    // copy its rewriting for the wire makes when its last read found one (see below).
    const fileBytes = await this.#spool.fileBytes(id).catch(() => 0);
    const bytes = fileBytes > 0 ? fileBytes + (this.#rewriteBytes.get(id) ?? 0) : 0;
    const waits = !this.#inMemory.fitsNow(bytes);
    if (waits) {
      this.#log.debug({ id, bytes, held: this.#inMemory.held }, `${id}: waits until its ${bytes} bytes fit in delivery.maxBytesInMemory`);
    }
    const releaseBytes = await this.#inMemory.take(bytes);
    let releaseCopyBytes = (): void => undefined;
    if (this.#closing) { releaseBytes(); return; }
    const gen = this.#generation().acquire();
    try {
      // Held during the wait, which lasts as long as the large messages ahead take at their next hops (a tarpit's half
      // hour): not attempted (looked at before it only, the hold did not stop it).
      if (waits && await this.#spool.isHeld(id)) {
        this.#held.add(id);
        this.#log.info({ id, held: true }, `${id}: on hold, not attempted until released (postern queue release ${id})`);
        return;
      }
      // Delivery turned off by a reload meanwhile: not attempted (the wait may be long); the scan that turns it on again
      // schedules every message.
      if (!gen.config.delivery.enabled) return;
      let read: { envelope: SpoolEnvelope; message: Buffer };
      try {
        read = await this.#spool.readForDelivery(id, { hasState: !this.#noState.has(id) });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') { this.#unrecorded.delete(id); return; } // deleted (postern queue delete) or finished
        if (isSystemError(err)) {
          // The system failed the read (out of file descriptors, an I/O error), not the file: held until the
          // next `postern queue retry` it would wait for ever once the fault was gone. Tried again later.
          this.#readFailures.failed(err, { id });
          if (!this.#closing) this.#due.set(id, this.#dueAt(Date.now() + retryDelayMs(this.#delivery(), 1)));
          return;
        }
        this.#broken.add(id);
        this.#log.error({ id, err: (err as Error).message }, 'unreadable spool file: not delivering it');
        return;
      }
      this.#readFailures.succeeded();
      const { message } = read;
      if (fileBytes > 0) {
        // Lines over lineLengthLimit (and bare line ends, DKIM-signed) are rewritten in a copy held beside the message
        // for the whole attempt: counted too. Taken now if it fits; else everything is given back, and the attempt
        // waits, holding nothing, for the message and its copy together (waiting while holding could deadlock).
        const more = rewriteCopyBytes(message, gen.config.delivery) - (bytes - fileBytes);
        if (more > 0) {
          this.#rewriteBytes.set(id, (this.#rewriteBytes.get(id) ?? 0) + more);
          if (!this.#inMemory.fitsNow(more)) return READ_AGAIN;
          releaseCopyBytes = await this.#inMemory.take(more);
        }
      }
      if (read.envelope.noticeOf && this.#noState.has(id)) {
        // A notice spooled without a state file may have one now that another process wrote: withdrawn by `postern
        // queue delete` of its message (bounce.ts). Looked for at each notice's attempt: a notice is rare.
        const state = await this.#spool.readState(id);
        if (state) {
          read.envelope = { ...read.envelope, ...state };
          this.#noState.delete(id);
        }
      }
      const unrecorded = this.#unrecorded.get(id);
      const envelope = unrecorded ? { ...read.envelope, ...unrecorded } : read.envelope;
      const pending = envelope.recipients.filter((r) => !r.status).map((r) => r.address);
      const attempt = envelope.attempts + 1;
      if (envelope.noticeOf && await this.#noticeAwaitsRecord(envelope.noticeOf)) {
        // Spooled by an attempt whose outcome a crash kept from being recorded: that attempt runs again first and
        // finds this notice (engine/queue/bounce.ts); delivered before, the retry would send a second one.
        this.#log.info({ id, of: envelope.noticeOf.id }, `${id}: waits for the outcome of ${envelope.noticeOf.id}'s attempt ${envelope.noticeOf.attempt} to be recorded`);
        // Not one whose record failed: it is due when that record is tried again (sooner, it hurried a failing disk).
        if (!this.#active.has(envelope.noticeOf.id) && !this.#unrecorded.has(envelope.noticeOf.id)) this.#due.set(envelope.noticeOf.id, this.#dueAt(Date.now()));
        if (!this.#closing) this.#due.set(id, this.#dueAt(Date.now() + retryDelayMs(gen.config.delivery, 1)));
        return;
      }
      if (!pending.length) {
        // Finished earlier (the removal may have failed then: retried until it works).
        await this.#spool.remove(id, { hasState: !this.#noState.has(id) });
        this.#unrecorded.delete(id);
        this.#noState.delete(id);
        this.#emit({ id, attempt, outcomes: [], removed: true, bounceId: null, nextAttemptAt: null });
        return;
      }
      const delivery = gen.config.delivery;
      const resolver = this.#resolverFor(delivery);
      const env: TransactionEnv = {
        pool: this.#pool, resolver, material: this.#material, dkim: this.#dkim, overall: this.#overall, perDestination: this.#perDestination, suspensions: this.#suspensions,
        delivery, scope: gen, heloName: delivery.heloName ?? gen.config.hostname, own: this.#ownListeners(gen), ownName: gen.config.hostname, log: this.#log,
      };
      const hops = receivedCount(message);
      const groups = hops > MAX_HOPS
        // A mail loop (a smarthost that routes back to us, say): bounce instead of circling forever.
        ? [{ recipients: pending, plan: null, reason: 'mail loop (too many Received headers)', final: pending.map((r) => outcomeForFailure(r, new DeliveryFailure(`Too many hops (${hops} Received headers): mail loop?`, { permanent: true, enhanced: '5.4.6' }))) }]
        : await Promise.all([...groupByDomain(pending)].map(([domain, rcpts]) =>
          this.#plan(gen, resolver, envelope, message.length, attempt, domain, rcpts)));
      // One transaction per distinct plan: domains that lead to the same next hop share it.
      const transactions = new Map<string, { plan: DeliveryPlan; recipients: string[] }>();
      const outcomes: RecipientOutcome[] = [];
      for (const g of groups) {
        outcomes.push(...g.final);
        if (!g.plan) {
          this.#logTransaction(id, envelope, attempt, null, g.final, null, g.reason);
          continue;
        }
        const key = JSON.stringify([g.plan.hops.map((h) => [h.host, h.port, h.implicitTls]), g.plan.tls, g.plan.dkim ?? null]);
        const t = transactions.get(key);
        if (t) t.recipients.push(...g.recipients);
        else transactions.set(key, { plan: g.plan, recipients: [...g.recipients] });
      }
      const eightBit = hasEightBit(message);
      const utf8Header = envelope.smtputf8 === true && eightBit && hasEightBit(message.subarray(0, headerEnd(message)));
      // What goes on the wire (and is DKIM-signed): lines within delivery.lineLengthLimit. Bounces quote the message as spooled.
      const sent = withLinesWithin(message, delivery.lineLengthLimit);
      const dsn: TransactionDsn = {
        ...envelope.dsn,
        recipients: new Map(envelope.recipients.map((r) => [r.address, { ...(r.notify ? { notify: r.notify } : {}), ...(r.orcpt ? { orcpt: r.orcpt } : {}) }])),
      };
      // Deliveries made while other transactions of this attempt still run are written as they come (#recordProgress).
      let running = transactions.size;
      const delivered = new Set<string>();
      const queued = new Map(envelope.recipients.map((r) => [r.address, r]));
      let progressRecorded = Promise.resolve();
      const signed: NonNullable<Transaction['signed']> = new Map(); // one signing per DKIM key set, not per transaction
      const settled = await Promise.allSettled([...transactions.values()].map(async (t) => {
        const r = await deliverTransaction(env, t.plan, { id, from: envelope.sender, to: t.recipients, message: sent, eightBit, utf8Header, dsn, signed });
        for (const tr of r.transactions) this.#logTransaction(id, envelope, attempt, t.plan, tr.outcomes.filter((o) => !o.destinationBusy), tr.connection);
        running--;
        const more = r.outcomes.filter((o) => o.status === 'delivered' && !delivered.has(o.recipient) && !awaitsSuccessNotice(envelope.sender, queued.get(o.recipient), o));
        for (const o of more) delivered.add(o.recipient);
        if (more.length && running > 0) progressRecorded = progressRecorded.then(() => this.#recordProgress(envelope, delivered));
        return r.outcomes;
      }));
      await progressRecorded;
      // A transaction that threw (none is meant to) fails the attempt only once the others have ended: failing at once
      // scheduled the message again while they still delivered it. What they delivered is recorded above (the failed
      // one never counts as ended), so the next attempt does not send it again.
      for (const r of settled) {
        if (r.status === 'rejected') throw r.reason;
        outcomes.push(...r.value);
      }
      const busy = outcomes.find((o) => o.destinationBusy)?.destinationBusy;
      // Nothing tried, only a slow destination's backlog found full: set aside until it has room, not an attempt.
      // (Some recipients tried as well: the attempt counts, and the busy ones wait for its retry like any deferral.)
      if (busy && outcomes.every((o) => o.destinationBusy)) return busy;
      if (busy) this.#logTransaction(id, envelope, attempt, null, outcomes.filter((o) => o.destinationBusy), null, 'destination busy');
      if (outcomes.length && outcomes.every((o) => o.ownShortage)) {
        // Nothing reached a next hop: this process was out of descriptors (or socket memory) at every connect. Not
        // held against the message: counted, it moved along the retry schedule, and one past maxAgeHours was bounced
        // for our shortage. Tried again after the first retry delay, its record as it was.
        const wait = retryDelayMs(delivery, 1);
        this.#log.info({ id, attempt, seconds: wait / 1000 }, `${id}: not counted as an attempt: this process was out of its own resources; tried again in ${wait / 1000} s`);
        if (!this.#closing) this.#due.set(id, this.#dueAt(Date.now() + wait));
        return;
      }
      await this.#record(gen, envelope, message, attempt, outcomes);
      // Recorded: a due request it was made for is done. Not while stopping, when an attempt may have been cut
      // short: the request is then made again at the next start (one early attempt at most).
      if (!this.#closing) this.#requestDone(id);
    } finally {
      gen.release();
      releaseCopyBytes();
      releaseBytes();
    }
  }

  /** Default route + pre-delivery script for one recipient domain. */
  async #plan(
    gen: PolicyGeneration, resolver: DeliveryResolver, envelope: SpoolEnvelope, size: number, attempt: number,
    domain: string, recipients: string[],
  ): Promise<Group> {
    const delivery = gen.config.delivery;
    const route = await defaultRoute(delivery, domain, resolver);
    const first = route.hops[0]!;
    let decision: PredeliveryDecision = { action: 'deliver', tls: {} };
    if (hasPredelivery(gen)) {
      const ctx: PredeliveryContext = {
        message: {
          id: envelope.id, sender: envelope.sender, recipients, size, attempt,
          previousErrors: envelope.errors, receivedAt: envelope.receivedAt,
        },
        destination: { host: first.host, port: first.port, implicitTls: first.implicitTls, domain, kind: route.kind },
        session: envelope.session,
      };
      decision = await runPredelivery(gen, ctx, this.#log);
    }
    if (decision.action !== 'deliver') {
      const failure = decision.failure;
      return { recipients, plan: null, reason: decision.reason, final: recipients.map((r) => outcomeForFailure(r, failure)) };
    }
    let hops: NextHop[];
    // A port the script names decides TLS the usual way (465: implicit) unless it says otherwise.
    const implicitFor = (hop: NextHop): boolean => decision.implicitTls ?? (decision.port !== undefined ? decision.port === 465 : hop.implicitTls);
    if (decision.host !== undefined) {
      hops = [{ host: decision.host, port: decision.port ?? first.port, implicitTls: implicitFor(first) }];
    } else if (route.failure) {
      return { recipients, plan: null, reason: `delivery.route: no usable ${route.kind === 'mx' ? 'MX' : 'smarthost'}`, final: recipients.map((r) => outcomeForFailure(r, route.failure!)) };
    } else if (decision.port !== undefined || decision.implicitTls !== undefined) {
      hops = route.hops.map((h) => ({ ...h, port: decision.port ?? h.port, implicitTls: implicitFor(h) }));
    } else {
      hops = route.hops;
    }
    const tls: TlsPolicy = { mode: decision.tls.mode ?? delivery.tls.mode };
    const cert = decision.tls.clientCertificate === null ? undefined : decision.tls.clientCertificate ?? delivery.tls.clientCertificate;
    const ca = decision.tls.ca ?? delivery.tls.ca;
    if (cert) tls.clientCertificate = cert;
    if (ca) tls.ca = ca;
    if (decision.tls.serverName) tls.serverName = decision.tls.serverName;
    const loggedIn = envelope.session.authenticatedUser !== null;
    const dkim = chooseDkimKeys(delivery, decision.dkim, envelope.sender, loggedIn);
    // Said, so that a site whose internal hosts relay by address sees why their mail goes out unsigned.
    if (!loggedIn && decision.dkim === undefined && chooseDkimKeys(delivery, undefined, envelope.sender, true).length) {
      this.#log.info({ id: envelope.id, dkim: 'unsigned' }, `${envelope.id}: not DKIM-signed: its client did not log in, and the sender domain's keys sign only a logged-in client's mail (a predelivery script may name a key)`);
    }
    return { recipients, plan: { hops, tls, ...(dkim.length ? { dkim } : {}) }, final: [] };
  }

  /**
   * Whether the attempt that spooled a notice has not had its outcome recorded on disk yet: its message is still
   * spooled (held or not) and its state file counts fewer attempts. Kept in memory only (#unrecorded) is not enough:
   * a crash would make the attempt run again under the same number, and a notice gone by then would be spooled
   * again, under the same id (which the journal must never see twice).
   */
  async #noticeAwaitsRecord(of: NonNullable<SpoolEnvelope['noticeOf']>): Promise<boolean> {
    if (this.#broken.has(of.id)) return false;
    // Its last record failed (#record's catch): the state file on disk may count the attempt all the same (renamed into
    // place, its folder's sync failed), and not survive a power loss. Let go then, a notice went out and a withdrawn one
    // was removed (its done mark synced) before the attempt was recorded for good: after a power loss the attempt ran
    // again, spooled a new notice under the removed one's id, which that done mark hid at the next start.
    if (this.#unrecorded.has(of.id)) return true;
    // Its record under way: the state file read now may count the attempt before it is durable (see #recording).
    const recording = this.#recording.get(of.id);
    if (recording !== undefined && recording <= of.attempt) return true;
    try {
      if (!(await this.#spool.has(of.id))) return false;
      return ((await this.#spool.readState(of.id))?.attempts ?? 0) < of.attempt;
    } catch {
      return false; // unreadable: the notice is not held back for it
    }
  }

  /**
   * Recipients delivered while other transactions of the attempt still run, written at once: the attempt's record
   * (#record) comes only once its slowest next hop is done (half an hour for a tarpit that answers each reply just in
   * time), and a crash before it sent to these again at the restart. The attempt has not ended: its number, schedule
   * and errors stay as they were, and its record writes over this. A failure to write leaves things as they were.
   */
  async #recordProgress(envelope: SpoolEnvelope, delivered: ReadonlySet<string>): Promise<void> {
    const state: SpoolState = {
      attempts: envelope.attempts, nextAttemptAt: envelope.nextAttemptAt, errors: envelope.errors,
      recipients: envelope.recipients.map((r) => (!r.status && delivered.has(r.address) ? { ...r, status: 'delivered', lastError: undefined } : r)),
    };
    try {
      await this.#spool.updateState(envelope.id, state);
      this.#noState.delete(envelope.id);
    } catch (err) {
      this.#log.warn({ id: envelope.id, err: (err as Error).message }, `${envelope.id}: cannot record the recipients delivered so far before the attempt ends; recorded at its end`);
    }
  }

  /**
   * A notice of ours that returned the message whole (RET=FULL) and that a next hop refused for its size (5.3.4: over
   * its SIZE, or its own 552 5.3.4; 5.2.3, a mailbox's limit): spooled again with the message's header only, for those
   * recipients. Discarded as any undeliverable bounce, it left the sender without word of the failure: the notice is a
   * few KB more than the message, so a message that just passed a next hop's SIZE bounced into a notice over it.
   * Spooled once per attempt of the refused notice, as its notices are (spoolNoticeOnce): under a random id, a crash
   * before that attempt's record sent the sender a copy at each run of it. One that a crashed run spooled and that this
   * run does not need (the notice went through, or its refusal was another) is withdrawn.
   */
  async #noticeWithHeaderOnly(envelope: SpoolEnvelope, message: Buffer, outcomes: RecipientOutcome[], bounced: ReadonlySet<string>, attempt: number): Promise<{ id: string | null; withdrawn: string[]; notSpooled?: string[] }> {
    const refused = outcomes.filter((o) => bounced.has(o.recipient) && TOO_BIG.has(o.enhanced)).map((o) => o.recipient);
    const smaller = refused.length ? headerOnlyNotice(message) : null;
    try {
      const spooled = await spoolNoticeOnce(this.#noticeSpool, envelope.id, 'failure', attempt, smaller ? refused : [], async (id, to) => {
        const writer = this.#spool.create(id);
        try {
          writer.write(smaller!);
          await writer.commit({
            version: 1, id, receivedAt: envelope.receivedAt, sender: '', recipients: to.map((address) => ({ address })),
            noticeOf: { id: envelope.id, attempt, reported: to }, size: 0, session: envelope.session,
            attempts: 0, nextAttemptAt: new Date().toISOString(), errors: [],
          });
        } catch (err) {
          try { writer.abort(); } catch { /* already gone */ }
          throw err;
        }
      });
      if (spooled.id) this.#log.info({ id: envelope.id, notice: spooled.id, to: refused }, `${envelope.id}: refused for its size: sent again as ${spooled.id}, with the returned message's header only`);
      return spooled;
    } catch (err) {
      // Our failure (EIO, EMFILE, a full disk), not the notice's: the refused recipients stay queued (#record).
      this.#log.error({ id: envelope.id, err, to: refused }, 'cannot spool the notice again with the header only; the notice stays queued and is tried again later');
      if (isNoSpace(err)) this.#useReserve();
      return { id: null, withdrawn: [], notSpooled: smaller ? refused : [] };
    }
  }

  /** Make the attempt's outcome durable: bounce first, then the state (or removal). */
  async #record(gen: PolicyGeneration, envelope: SpoolEnvelope, message: Buffer, attempt: number, outcomes: RecipientOutcome[]): Promise<void> {
    this.#recording.set(envelope.id, attempt);
    try {
      await this.#recordOnce(gen, envelope, message, attempt, outcomes);
    } finally {
      // Once it is settled: recorded, or kept in #unrecorded (set before this), which holds the notices back then.
      this.#recording.delete(envelope.id);
    }
  }

  async #recordOnce(gen: PolicyGeneration, envelope: SpoolEnvelope, message: Buffer, attempt: number, outcomes: RecipientOutcome[]): Promise<void> {
    const id = envelope.id;
    const delivery = gen.config.delivery;
    this.#noticeClockSteps();
    const now = Date.now();
    const expired = isExpired(delivery, envelope.receivedAt, now, (since, at) => this.#clockSteps.elapsedSince(since, at), attempt);
    const byRecipient = new Map(outcomes.map((o) => [o.recipient, o]));
    const failed: FailedRecipient[] = [];
    const relayed: FailedRecipient[] = [];
    const newlyBounced = new Set<string>();
    const recipients: SpoolRecipient[] = envelope.recipients.map((r) => {
      const o = r.status ? undefined : byRecipient.get(r.address);
      if (!o) return r;
      if (o.status === 'delivered') {
        if (wants(r, 'SUCCESS') && !o.dsnPassedOn) relayed.push({ recipient: r.address, status: o.enhanced, diagnostic: o.reply, remoteReply: o.remoteReply, remoteMta: o.remoteMta, ...(r.orcpt ? { orcpt: r.orcpt } : {}) });
        return { ...r, status: 'delivered', lastError: undefined };
      }
      // Expired, but not tried this time for our own shortage (ownShortage): waits for an attempt that reaches a next hop.
      if (o.status === 'permanent' || (expired && !o.ownShortage)) {
        newlyBounced.add(r.address);
        if (wants(r, 'FAILURE')) {
          failed.push({ recipient: r.address, status: o.enhanced, diagnostic: o.reply, remoteReply: o.remoteReply, remoteMta: o.remoteMta, ...(r.orcpt ? { orcpt: r.orcpt } : {}) });
        }
        return { ...r, status: 'bounced', lastError: o.reply };
      }
      return { ...r, lastError: o.reply };
    });
    let bounceId: string | null = null;
    // Notices withdrawn (spoolBounce): a state file now says they are done, which the runner's note that they had none
    // hid (it sent them all the same); tried once this record is made, they are removed unsent.
    const withdrawn: string[] = [];
    const noting = (spooled: { id: string | null; withdrawn: string[] }): string | null => {
      for (const w of spooled.withdrawn) this.#noState.delete(w);
      withdrawn.push(...spooled.withdrawn);
      return spooled.id;
    };
    // With no one to report too: a notice this attempt spooled before a crash, naming recipients that this run of it
    // did not fail, is withdrawn (spoolBounce).
    // Deleted (`postern queue delete`: "without delivering or bouncing it") while this attempt ran: its failures are
    // not bounced. An administrator deletes a spam run with forged senders to stop its backscatter; the attempts under
    // way then bounced to those senders all the same. (Looked up only when there is a failure to report.)
    const deleted = failed.length > 0 && envelope.sender !== '' && !(await this.#spool.has(id).catch(() => true));
    if (deleted) {
      this.#log.info({ id, to: failed.map((f) => f.recipient) }, `${id}: deleted during its attempt: no non-delivery notification`);
      // And none that a run of this attempt spooled before a crash (the delete withdrew it too, unless it ran first).
      noting({ id: null, withdrawn: await this.#withdrawNoticesOfDeleted(id, attempt) });
    } else if (envelope.sender !== '') {
      try {
        bounceId = noting(await spoolBounce(this.#noticeSpool, gen.config.hostname, envelope, message, failed, expired && failed.some((f) => f.status.startsWith('4')), 'failure', attempt));
        // Deleted between the look above and the spooling: the delete looks for the notices after the message is gone,
        // and this looks for the message after the notice is spooled, so one of the two sees the other.
        if (bounceId && !(await this.#spool.has(id).catch(() => true))) {
          this.#log.info({ id, to: failed.map((f) => f.recipient) }, `${id}: deleted during its attempt: no non-delivery notification`);
          noting({ id: null, withdrawn: await this.#withdrawNoticesOfDeleted(id, attempt) });
          bounceId = null;
        }
        // Postfix's `sender non-delivery notification` line: which message bounced whom, under which new id.
        if (bounceId) {
          this.#log.info({ id, bounce: bounceId, from: envelope.sender, to: failed.map((f) => f.recipient), expired },
            `${id}: sender non-delivery notification: ${bounceId}${expired ? ' (retry period over)' : ''}`);
        }
      } catch (err) {
        // No bounce, no verdict: keep the recipients pending and try again later.
        this.#log.error({ id, err }, 'cannot spool the bounce; the failed recipients stay queued');
        if (isNoSpace(err)) this.#useReserve();
        for (const r of recipients) if (newlyBounced.has(r.address)) delete r.status;
        newlyBounced.clear();
      }
    } else if (newlyBounced.size && envelope.sender === '') {
      const headerOnly = envelope.noticeOf ? await this.#noticeWithHeaderOnly(envelope, message, outcomes, newlyBounced, attempt) : null;
      // Its header-only copy could not be spooled: no verdict, as for a bounce that cannot be spooled (above). Discarded,
      // the sender never heard that the message failed.
      for (const r of recipients) {
        if (headerOnly?.notSpooled?.includes(r.address)) { delete r.status; newlyBounced.delete(r.address); }
      }
      bounceId = headerOnly ? noting(headerOnly) : null;
      // A notice deleted during this attempt (`postern queue delete --from '<>'`) is not sent again either: the delete
      // looks for its copy after the notice is gone, and this looks for the notice after the copy is spooled.
      if (bounceId && !(await this.#spool.has(id).catch(() => true))) {
        this.#log.info({ id, notice: bounceId }, `${id}: deleted during its attempt: not sent again with the header only`);
        noting({ id: null, withdrawn: await this.#withdrawNoticesOfDeleted(id, attempt) });
        bounceId = null;
      } else if (!bounceId && newlyBounced.size) this.#log.warn({ id, to: [...newlyBounced] }, 'undeliverable bounce (null sender): discarded');
    } else if (envelope.noticeOf) {
      // Nothing refused: a copy with the header only that a run of this attempt cut off by a crash spooled is withdrawn.
      noting(await this.#noticeWithHeaderOnly(envelope, message, outcomes, newlyBounced, attempt));
    }
    let successNoticeId: string | null = null;
    if (envelope.sender !== '') {
      // The recipients are delivered whatever becomes of their notice: one that cannot be spooled is logged, not retried.
      try {
        successNoticeId = noting(await spoolBounce(this.#noticeSpool, gen.config.hostname, envelope, message, relayed, false, 'success', attempt));
        if (successNoticeId) this.#log.info({ id, notice: successNoticeId, from: envelope.sender, to: relayed.map((r) => r.recipient) }, `${id}: sender delivery status notification: ${successNoticeId}`);
      } catch (err) {
        this.#log.error({ id, err, to: relayed.map((r) => r.recipient) }, 'cannot spool the success notice (NOTIFY=SUCCESS) for delivered recipients: none is sent');
        if (isNoSpace(err)) this.#useReserve();
      }
    }
    const newErrors = outcomes.filter((o) => o.status !== 'delivered')
      .map((o) => (o.remoteReply && o.remoteMta ? `${o.recipient}: ${o.remoteMta} said: ${o.reply}` : `${o.recipient}: ${o.reply}`));
    const done = recipients.every((r) => r.status);
    let nextAttemptAt: string | null = null;
    const progress = outcomes.some((o) => o.status !== 'temporary') || newlyBounced.size > 0;
    if (!done && this.#closing && !progress) return; // cut short by shutdown: not an attempt worth counting
    if (!done) nextAttemptAt = new Date(now + retryDelayMs(delivery, attempt)).toISOString();
    const state: SpoolState = {
      attempts: attempt, nextAttemptAt: nextAttemptAt ?? new Date(now).toISOString(), recipients,
      errors: [...envelope.errors, ...newErrors].slice(-MAX_ERRORS),
    };
    try {
      if (done) {
        await this.#spool.remove(id, { hasState: !this.#noState.has(id) });
        this.#noState.delete(id);
        this.#log.info({ id, attempt, bounce: bounceId }, 'message finished, removed from the spool');
      } else {
        await this.#spool.updateState(id, state);
        this.#noState.delete(id);
        // Deleted meanwhile: no orphan state. A look the disk failed is no deletion (the message stays, pending).
        if (!(await this.#spool.has(id).catch(() => true))) await this.#spool.remove(id);
        else {
          if (!this.#closing) this.#due.set(id, this.#dueAt(Date.parse(nextAttemptAt!)));
          // Read from a journal record (a file's envelope carries its SHA-256): a message moved already, or large enough
          // for a file of its own, is not looked for in the journal at every deferral (for the queue process, a look
          // through a worker's journal: its folder read, and each segment's file and done list looked at).
          if (attempt >= MOVE_OUT_OF_JOURNAL_AFTER && envelope.sha256 === undefined) await this.#moveOutOfJournal(id, message.length);
        }
      }
      this.#unrecorded.delete(id);
    } catch (err) {
      // Delivered or bounced is final even if the disk cannot say so yet: remembered here, written later.
      this.#unrecorded.set(id, state);
      this.#log.error({ id, err }, 'cannot record the outcome of a delivery attempt in the spool; kept in memory and retried, no recipient is sent to twice');
      if (isUnconfirmed(err)) this.#recordOnceDiskAnswers();
      // A full disk: with the reserve's room, recorded at once.
      const wait = isNoSpace(err) && this.#useReserve() ? 0 : retryDelayMs(delivery, 1);
      if (!this.#closing) this.#due.set(id, this.#dueAt(Date.now() + wait));
      this.#noticesAfterRecord([bounceId, successNoticeId], withdrawn, false);
      this.#emit({ id, attempt, outcomes, removed: false, bounceId, nextAttemptAt });
      return;
    }
    // Only now: a notice tried before its attempt's outcome is on disk is held back (#noticeAwaitsRecord), and due again now.
    this.#noticesAfterRecord([bounceId, successNoticeId], withdrawn, true);
    this.#emit({ id, attempt, outcomes, removed: done, bounceId, nextAttemptAt });
  }

  /**
   * The notices of a record: tried now. A withdrawn one (marked done) is removed unsent at its try, which is made now
   * too when it is scheduled already: one tried before this record waited a whole retry delay (#noticeAwaitsRecord),
   * and stayed listed by `postern queue list` as a bounce pending for its sender until then. So is a spooled one, once
   * the record is durable (`recorded`): a scan that found it while the record was being made had it wait a retry delay.
   */
  #noticesAfterRecord(spooled: ReadonlyArray<string | null>, withdrawn: readonly string[], recorded: boolean): void {
    for (const notice of [...spooled, ...withdrawn]) if (notice) this.notify(notice);
    const hurried = recorded ? [...withdrawn, ...spooled.filter((n): n is string => n !== null)] : withdrawn;
    for (const notice of hurried) if (!this.#closing && this.#due.has(notice)) this.#due.set(notice, this.#dueAt(Date.now()));
    if (hurried.length) this.#kick();
  }

  /** withdrawNoticesOfDeleted, a failure logged (the notice may then go out: the sender hears of a deleted message). */
  async #withdrawNoticesOfDeleted(id: string, attempt: number): Promise<string[]> {
    try {
      // The spool itself, not #noticeSpool: a notice this record just spooled is not in hand yet (notified after it).
      return await withdrawNoticesOfDeleted(this.#spool, id, attempt);
    } catch (err) {
      this.#log.error({ id, err }, `${id}: deleted during its attempt: cannot withdraw the non-delivery notification spooled for it`);
      return [];
    }
  }

  /** A failure to move costs only disk room (the journal keeps the message): logged, tried again at the next deferral. */
  async #moveOutOfJournal(id: string, bytes: number): Promise<void> {
    try {
      if (!(await this.#roomToMove(bytes))) return;
      await this.#spool.moveOutOfJournal(id);
    } catch (err) {
      this.#log.warn({ id, err }, `${id}: could not move the deferred message out of the journal into a file of its own (its journal segment stays on disk until it is delivered or expires): ${(err as Error).message}`);
    }
  }

  /**
   * One line per recipient outcome group of a transaction, as Postfix's smtp(8) logs deliveries:
   * `ID: to=<…>, relay=host[ip]:port, delay=S, attempt=N, tls=…, client_certificate=…, status=sent (250 …)`.
   * Outcomes settled without a transaction (no plan: `relay=none`) carry the `reason` that decided them.
   */
  #logTransaction(
    id: string, envelope: SpoolEnvelope, attempt: number, plan: DeliveryPlan | null, outcomes: RecipientOutcome[],
    connection: { remote: string; tls: { protocol: string | null } | null } | null, reason?: string,
  ): void {
    const delay = Math.max(0, (Date.now() - Date.parse(envelope.receivedAt)) / 1000);
    const tls = connection?.tls?.protocol ?? (connection ? 'none' : null);
    // Which certificate was presented: the one the plan named, when the connection did TLS at all.
    const clientCertificate = connection?.tls ? plan?.tls.clientCertificate ?? null : null;
    for (const status of ['delivered', 'temporary', 'permanent'] as const) {
      const these = outcomes.filter((o) => o.status === status);
      if (!these.length) continue;
      const word = status === 'delivered' ? 'sent' : status === 'temporary' ? 'deferred' : 'bounced';
      const relay = these[0]!.remoteMta ?? connection?.remote ?? 'none';
      const to = these.map((o) => o.recipient);
      this.#log[status === 'delivered' ? 'info' : 'warn']({
        id, from: envelope.sender, to, status: word, relay, delay: Number(delay.toFixed(2)), attempt,
        tls, clientCertificate, dkim: plan?.dkim?.join(',') ?? null, reply: these[0]!.reply, reason,
      }, `${id}: ${to.map((r) => `to=<${r}>`).join(', ')}, relay=${relay}, delay=${delay.toFixed(2)}, attempt=${attempt}, tls=${tls ?? 'none'}, ` +
        `client_certificate=${clientCertificate ?? 'none'}${plan?.dkim ? `, dkim=${plan.dkim.join(',')}` : ''}, status=${word} (${these[0]!.reply})`);
    }
  }

  #emit(e: AttemptEvent): void {
    for (const fn of this.#listeners) {
      try { fn(e); } catch { /* a listener's problem */ }
    }
  }

  /** Stop: no new attempts, connections closed, running attempts settled (their progress recorded). */
  async close(): Promise<void> {
    const began = performance.now();
    this.#closing = true;
    if (this.#scanTimer) clearTimeout(this.#scanTimer);
    if (this.#wakeTimer) clearTimeout(this.#wakeTimer);
    const waiting = this.#pool.close();
    // Said, as a worker says the sessions its stop waits for: why this stop may take up to 20 s.
    if (waiting) this.#log.info({ deliveries: waiting, waitMs: STOP_VERDICT_WAIT_MS }, 'stopping: deliveries whose message went out whole wait for the next hop\'s verdict');
    await this.#scanning;
    await Promise.allSettled([...this.#active.values()]);
    await this.#reserving;
    await this.#diskAnswersBeforeStop(began);
    await this.#writeUnrecorded();
    this.#pool.close();
  }

  /**
   * Outcomes kept in memory while the disk does not confirm writes: the stop waits for it to answer, within
   * STOP_DISK_WAIT_MS of its start. Refused at once, they were dropped with the process (it ends without waiting for a
   * hung sync), and a disk that answered seconds later (a storage path's failover) sent their delivered recipients
   * again after the restart.
   */
  async #diskAnswersBeforeStop(began: number): Promise<void> {
    const answered = this.#unrecorded.size ? this.#spool.writesConfirmed() : null;
    const waitMs = began + STOP_DISK_WAIT_MS - performance.now();
    if (!answered || waitMs <= 0) return;
    this.#log.warn({ outcomes: this.#unrecorded.size, waitMs: Math.round(waitMs) }, `stopping: the outcomes of ${this.#unrecorded.size} delivery attempts are not recorded yet (the disk does not confirm writes): waiting up to ${Math.round(waitMs / 1000)} s for it to answer`);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([answered, new Promise<void>((resolve) => { timer = setTimeout(resolve, waitMs); })]);
    clearTimeout(timer);
  }

  /**
   * Outcomes kept in memory for want of a record (#record's catch), written before the process ends. Dropped with the
   * process, the message was read after the next start as its spool file says, and a recipient the next hop had
   * accepted got a second copy without any crash. One that still cannot be written is said, with what follows.
   */
  async #writeUnrecorded(): Promise<void> {
    for (const id of [...this.#unrecorded.keys()]) {
      try {
        await this.#writeOneUnrecorded(id);
      } catch (err) {
        this.#log.error({ id, err }, `${id}: cannot record the outcome of its last attempt before stopping: the recipients it delivered may be sent to again after the next start`);
      }
    }
  }

  /** The outcome of `id` kept in memory, written (with the reserve's room on a full disk); then no longer kept. */
  async #writeOneUnrecorded(id: string): Promise<void> {
    const state = this.#unrecorded.get(id);
    if (!state) return;
    const write = async (): Promise<void> => {
      if (state.recipients.every((r) => r.status)) {
        await this.#spool.remove(id, { hasState: !this.#noState.has(id) });
        return;
      }
      await this.#spool.updateState(id, state);
      this.#noState.delete(id);
      if (!(await this.#spool.has(id))) await this.#spool.remove(id); // deleted meanwhile: no orphan state
    };
    await write().catch(async (err: unknown) => {
      if (!isNoSpace(err) || !this.#useReserve()) throw err;
      await write(); // with the reserve's room
    });
    if (this.#unrecorded.get(id) === state) this.#unrecorded.delete(id);
  }

  /**
   * Outcomes refused because the disk did not confirm writes (spool.syncDeadlineMs): written as soon as it does again.
   * Left for each message's next attempt (the first retry step later: 5 minutes by default, more after each refused
   * try), they lived in memory alone long after the disk and /readyz were healthy, and a crash of this process then
   * (the OOM killer, a kill -9) sent their delivered recipients again at the restart. Each write counts as its
   * message's attempt (#active): none of its attempts runs meanwhile, nor writes beside it.
   */
  #recordOnceDiskAnswers(): void {
    if (this.#awaitingDisk) return;
    this.#awaitingDisk = true;
    void (this.#spool.writesConfirmed() ?? Promise.resolve()).then(async () => {
      this.#awaitingDisk = false;
      // One after another, as at a stop: thousands at once (a long hang under load) took as many files and threads.
      for (const id of [...this.#unrecorded.keys()]) {
        if (this.#closing) return; // close() writes the rest
        if (this.#active.has(id)) continue; // its attempt under way records it
        let refused = false;
        const run = this.#writeOneUnrecorded(id).catch((err: unknown) => {
          // Refused again (the disk stopped answering again): when it answers; otherwise at the message's next attempt.
          refused = isUnconfirmed(err);
          this.#log.warn({ id, err }, `${id}: cannot record the outcome of its last attempt yet, now that the disk answers: kept in memory, written at its next attempt`);
        });
        this.#active.set(id, run);
        await run;
        this.#active.delete(id);
        // Made due while its outcome was written: attempted now.
        if (this.#dueAfterAttempt.delete(id) && !this.#closing) this.#due.set(id, this.#dueAt(Date.now()));
        this.#kick();
        if (refused) {
          this.#recordOnceDiskAnswers();
          return;
        }
      }
    });
  }
}

/**
 * A failure of the system call itself (EMFILE, EIO, EACCES…), which may pass, as opposed to a file whose
 * contents are bad (a checksum or JSON error, which carry no errno): only the latter holds a message back.
 */
function isSystemError(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException | null;
  return typeof e?.errno === 'number' && typeof e.code === 'string';
}

/** RFC 3463 statuses of a message refused for its size: too big for the system (5.3.4), over a mailbox's limit (5.2.3). */
const TOO_BIG: ReadonlySet<string> = new Set(['5.3.4', '5.2.3']);

/**
 * DSN NOTIFY (RFC 3461 §4.1): without the parameter failures are reported and successes are not; NEVER reports
 * nothing; otherwise what the list names.
 */
function wants(r: SpoolRecipient, what: 'FAILURE' | 'SUCCESS'): boolean {
  if (!r.notify?.length) return what === 'FAILURE';
  const n = r.notify.map((x) => x.toUpperCase());
  return !n.includes('NEVER') && n.includes(what);
}

/**
 * A delivered recipient whose success notice (NOTIFY=SUCCESS, the next hop not taking it over) is ours to send: its
 * delivery is recorded with the notice, at the attempt's end (a delivery recorded before, then a crash, and no notice).
 */
function awaitsSuccessNotice(sender: string, r: SpoolRecipient | undefined, o: RecipientOutcome): boolean {
  return sender !== '' && !o.dsnPassedOn && !!r && wants(r, 'SUCCESS');
}

/**
 * The bytes an attempt allocates beside `message` to send it: the copy with lines within lineLengthLimit, and, when
 * DKIM keys are declared (which sign it is decided later, per destination), the copy with CRLF line ends that is signed.
 */
function rewriteCopyBytes(message: Buffer, delivery: DeliveryConfig): number {
  const lines = linesWithinCopyBytes(message, delivery.lineLengthLimit);
  const crlf = Object.keys(delivery.dkim).length > 0 ? crlfCopyBytes(message) : 0;
  return lines + (crlf > 0 ? crlf + Math.max(0, lines - message.length) : 0);
}

/** #attemptOnce: read again, the message's rewriting copy counted from the start. */
const READ_AGAIN = Symbol('read again');

/** Native (isAscii): a loop in JS held the queue's thread ~30-150 ms for a 25 MB message. */
function hasEightBit(buf: Buffer): boolean {
  return !isAscii(buf);
}

/** Where the header section ends: its first empty line, whatever its line ends; the message's end without one. */
function headerEnd(message: Buffer): number {
  const ends = [message.indexOf('\r\n\r\n'), message.indexOf('\n\n'), message.indexOf('\r\n\n'), message.indexOf('\n\r\n')].filter((i) => i >= 0);
  return ends.length ? Math.min(...ends) : message.length;
}

/**
 * Received header fields in the message header (up to the first empty line, whatever its line ends: with only
 * CRLF CRLF looked for, a bare-LF message's body was counted too, and one quoting 51 Received lines bounced as a loop).
 */
function receivedCount(message: Buffer): number {
  const end = headerEnd(message);
  const head = message.subarray(0, end === message.length ? Math.min(end, 1024 * 1024) : end).toString('latin1');
  return (head.match(/^Received:/gim) ?? []).length;
}

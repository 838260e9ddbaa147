/**
 * Exactly once per call: the host operations (host-operations.ts) a call starts, kept for the call's whole
 * life, so that an attempt of it that the scheduler runs again does not start them again.
 *
 * A call can be run more than once: a fast-path attempt stopped at its budget is run again on an isolate
 * thread, a batch stopped part-way runs its stopped call again in a later batch, an isolate lost during a
 * batch runs the batch's calls again, each alone. An attempt may already have started operations —
 * `await rate()` counted a message, `counter().add()` added — and isolated-vm cannot move a half-run
 * call to another thread, nor can the host take back a store write. So every operation an attempt starts
 * is recorded in its call's journal with its answer (given at once, or the pending promise); the next
 * attempt's Nth operation of the same kind with the same arguments gets the Nth recorded answer instead of
 * starting anything. Scripts are deterministic given their answers, so a re-run asks the same things in
 * the same order; one that does not (a key built from Date.now()) fails closed — what it should have
 * counted is unknown. The alternative, never stopping a call once it has started an operation, would let
 * any script that calls rate() first hold the event loop for its whole time limit.
 *
 * Attribution: an operation names the call the runtime was running (its id). After a fast-path entry the
 * calls' promise continuations run together (V8's microtask checkpoint at the end of the entry): with one
 * call in the entry they are its own; with several, they could be any of them, so they go to a pool shared
 * by the entry's calls (SharedOperations). A call that started anything is run again alone, never in a
 * batch (Sandbox), so every operation of a re-run is its own: it takes its recorded answers in order, then
 * pooled ones by kind and arguments (moving them into its own record for any later attempt). Code of a
 * stopped attempt that runs later (its leftover microtasks) starts nothing: the attempt is closed.
 */

/** One operation started: what it was, and its answer (text now, or the promise of it). */
interface Recorded {
  kind: string;
  /** As the isolate gave them (primitives), compared one by one on a re-run; no JSON text made per operation. */
  args: readonly unknown[];
  answer: string | Promise<string>;
}

/**
 * An operation that is not started. `park`: the code asking must not go on (a stopped attempt's, a call
 * over by its deadline): its promise never settles. Else it is thrown into the script (a re-run that asks
 * other things than its stopped attempt: its call fails anyway).
 */
export class OperationRefused extends Error {
  readonly park: boolean;
  constructor(message: string, park: boolean) {
    super(message);
    this.name = 'OperationRefused';
    this.park = park;
  }
}

/** Operations started by the continuations of a fast-path entry with several calls: any of theirs. */
export class SharedOperations {
  readonly #ops: Array<Recorded & { taken: boolean }> = [];
  /** Set when the entry was stopped or lost: code still running under its tag is a stopped attempt's. */
  closed = false;

  start(kind: string, args: readonly unknown[], live: () => string | Promise<string>): string | Promise<string> {
    if (this.closed) throw new OperationRefused(`${kind}: this attempt of the call was stopped`, true);
    const answer = live();
    this.#ops.push({ kind, args, answer, taken: false });
    return answer;
  }

  get size(): number {
    return this.#ops.length;
  }

  /** A recorded operation of this kind and arguments that no re-run has taken yet; taken now. */
  take(kind: string, args: readonly unknown[]): Recorded | undefined {
    const found = this.#ops.find((r) => !r.taken && r.kind === kind && sameArgs(r.args, args));
    if (found) found.taken = true;
    return found;
  }
}

/** The operations one call started, over all its attempts. */
export class OperationJournal {
  // Made on first use: nearly every call starts no operation and runs in at most one entry (a Set and an
  // array per call were ~450 B of a message's allocation, and the Set was often promoted).
  #ops: Recorded[] | null = null;
  #shared: SharedOperations | Set<SharedOperations> | null = null;
  /** Why a re-run of this call did not ask what its stopped attempt asked; the call then fails. */
  diverged: string | null = null;
  /** The call is over by its deadline (its isolate may still be running it): it starts nothing more. */
  over = false;

  /** Whether an attempt started anything (its own, or in a pool it shares). */
  get started(): boolean {
    if (this.#ops !== null && this.#ops.length > 0) return true;
    for (const shared of this.#pools()) if (shared.size > 0) return true;
    return false;
  }

  /** Whether an attempt started anything under the call's own id (not in a pool it shares). */
  get ownStarted(): boolean {
    return this.#ops !== null && this.#ops.length > 0;
  }

  /** The pools this call's entries shared (usually none or one). */
  #pools(): Iterable<SharedOperations> {
    const s = this.#shared;
    return s === null ? NO_POOLS : s instanceof SharedOperations ? [s] : s;
  }

  /** A new attempt of the call (each replays the journal from its start). */
  attempt(): Attempt {
    return new Attempt(this);
  }

  /** The entry this call ran in shares its continuations' operations with other calls. */
  share(ops: SharedOperations): void {
    const s = this.#shared;
    if (s === null || s === ops) this.#shared = ops;
    else if (s instanceof SharedOperations) this.#shared = new Set([s, ops]);
    else s.add(ops);
  }

  /** The Nth operation: the recorded answer when an earlier attempt started it, else started now (live()). */
  start(n: number, kind: string, args: readonly unknown[], live: () => string | Promise<string>): string | Promise<string> {
    if (this.over) throw new OperationRefused(`${kind}: the call is over (its deadline passed)`, true);
    if (this.diverged !== null) throw new OperationRefused(`${kind}: ${this.diverged}`, false);
    const ops = this.#ops;
    const earlier = ops?.[n];
    if (earlier) {
      if (earlier.kind === kind && sameArgs(earlier.args, args)) return earlier.answer;
      this.diverged = `run again after a stop, the call's host operation #${n + 1} was ${kind}${JSON.stringify(args)} where the stopped attempt's was ` +
        `${earlier.kind}${JSON.stringify(earlier.args)}; what it should count is unknown, so it fails`;
      throw new OperationRefused(`${kind}: ${this.diverged}`, false);
    }
    if (this.#shared !== null) for (const shared of this.#pools()) {
      const pooled = shared.take(kind, args);
      if (pooled) {
        this.#record(pooled); // this call's own now: a later attempt finds it in order
        return pooled.answer;
      }
    }
    const answer = live();
    this.#record({ kind, args, answer });
    return answer;
  }

  #record(op: Recorded): void {
    if (this.#ops === null) this.#ops = [op]; // most calls start one operation: an array of one, not of 17
    else this.#ops.push(op);
  }
}

const NO_POOLS: readonly SharedOperations[] = [];

/** The same arguments: as many, each the same primitive (they crossed out of the isolate as copies). */
function sameArgs(a: readonly unknown[], b: readonly unknown[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

/** One run of a call: its position in the journal, and whether it was stopped (then it starts nothing). */
export class Attempt {
  readonly journal: OperationJournal;
  #next = 0;
  closed = false;

  constructor(journal: OperationJournal) {
    this.journal = journal;
  }

  start(kind: string, args: readonly unknown[], live: () => string | Promise<string>): string | Promise<string> {
    if (this.closed) throw new OperationRefused(`${kind}: this attempt of the call was stopped`, true);
    return this.journal.start(this.#next++, kind, args, live);
  }
}

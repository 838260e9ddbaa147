/**
 * DNS queries that wait as long as they are given. c-ares (1.32 and later, in node:dns) times each try from
 * the server's recent answers (a multiple of their average, at least 250 ms), not from the Resolver's
 * `timeout`, which only applies to a server with no history yet. Behind a local caching resolver, which
 * answers most queries within a millisecond, a name whose recursion takes 1.5 s (a cold DNSBL or MX lookup)
 * timed out after 1 s, whatever `dns.timeoutMs` said. So each lookup asks again when a try goes unanswered,
 * while its budget lasts (a recursive resolver answers the new query from what the first one's recursion
 * found), and ends with ETIMEOUT when the budget is spent.
 *
 * The budget is this module's to judge, after the sockets are read (deadline-after-reads.ts), never c-ares's:
 * c-ares judges its tries in a timer, which a process that gets the CPU back late runs before it polls its
 * sockets, and a try it timed out there drops the answer that had come in time and was waiting (seen as
 * `timeout` for a name the server had answered at once). So a try of c-ares lasts HELD_LOOP_GRACE_MS longer than
 * this module waits for it: an unanswered try is asked again at `tryMs` by this module's own clock, with the
 * earlier try still open (its answer, when it comes, is taken as well).
 */
import { Resolver } from 'node:dns/promises';
import { deadlineAfterReads } from '../timing/deadline-after-reads.ts';

/**
 * How much longer c-ares keeps a try open than this module waits for it: an event loop held up to this long past
 * a deadline still reads an answer that came in time. (A try left open costs a c-ares query record, no socket.)
 */
export const HELD_LOOP_GRACE_MS = 2000;

/** A resolver for `withinBudget`: one c-ares try per query, open for `tryMs` + HELD_LOOP_GRACE_MS at most. */
export function budgetResolver(tryMs: number, servers: readonly string[] = []): Resolver {
  const open = tryMs + HELD_LOOP_GRACE_MS;
  const resolver = new Resolver({ timeout: open, tries: 1, maxTimeout: open });
  if (servers.length) resolver.setServers([...servers]);
  return resolver;
}

/** Failures that are the server's answer about the name (no such name, no such record), not a try gone wrong. */
const ANSWERS = new Set(['ENOTFOUND', 'ENODATA']);

/**
 * An answer from `ask()` (queries of a budgetResolver made with `tryMs`): asked again each `tryMs` without an
 * answer, and at once after a try c-ares gave up on, while `budgetMs` lasts; then ETIMEOUT. A try's failure (SERVFAIL,
 * REFUSED) ends the lookup only once no other try is open (then, or at the budget's end, it is the lookup's error).
 */
export function withinBudget<T>(budgetMs: number, ask: () => Promise<T>, tryMs: number = budgetMs): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const end = performance.now() + budgetMs;
    let done = false;
    let tries = 0;
    /** Tries asked and not yet settled. */
    let open = 0;
    /** A try's failure (SERVFAIL, REFUSED) kept while another try is open: taken when none answers. */
    let failed: NodeJS.ErrnoException | null = null;
    let cancelTry = (): void => {};
    const finish = (settle: () => void): void => {
      if (done) return;
      done = true;
      cancelTry();
      cancelBudget();
      settle();
    };
    const tryOnce = (): void => {
      const attempt = ++tries;
      cancelTry();
      if (end - performance.now() > tryMs) cancelTry = deadlineAfterReads(tryMs, tryOnce); // the last try waits for the budget's end
      let asked: Promise<T>;
      try { asked = ask(); } catch (err) { asked = Promise.reject(err); }
      open++;
      asked.then((value) => finish(() => resolve(value)), (err: NodeJS.ErrnoException) => {
        open--;
        if (done) return;
        if (err?.code !== 'ETIMEOUT') {
          // A name that does not exist, or has no such record, is an answer. A failure of one try (an older one's
          // recursion failed upstream) is not the lookup's while a try asked since may still answer.
          if (open === 0 || ANSWERS.has(err?.code ?? '')) finish(() => reject(err));
          else failed = err;
        } else if (attempt === tries && performance.now() < end) tryOnce(); // c-ares gave the latest try up early (its own estimate): asked again at once
        else if (open === 0 && failed) finish(() => reject(failed));
      });
    };
    const cancelBudget = deadlineAfterReads(budgetMs, () => finish(() => reject(failed ?? Object.assign(new Error('DNS query timed out'), { code: 'ETIMEOUT' }))));
    tryOnce();
  });
}

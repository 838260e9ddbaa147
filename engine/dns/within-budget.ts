/**
 * DNS queries that wait as long as they are given. c-ares (1.32 and later, in node:dns) times each try from
 * the server's recent answers (a multiple of their average, at least about 1 s), not from the Resolver's
 * `timeout`, which only applies to a server with no history yet. Behind a local caching resolver, which
 * answers most queries within a millisecond, a name whose recursion takes 1.5 s (a cold DNSBL or MX lookup)
 * timed out after 1 s, whatever `dns.timeoutMs` said. So each lookup asks again when a try goes unanswered,
 * while its budget lasts (a recursive resolver answers the new query from what the first one's recursion
 * found), and ends with ETIMEOUT when the budget is spent: one query in flight at a time.
 */
import { Resolver } from 'node:dns/promises';

/** A resolver for `withinBudget`: one try per query, none longer than `tryMs` (c-ares's upper bound). */
export function budgetResolver(tryMs: number, servers: readonly string[] = []): Resolver {
  const resolver = new Resolver({ timeout: tryMs, tries: 1, maxTimeout: tryMs });
  if (servers.length) resolver.setServers([...servers]);
  return resolver;
}

/** An answer from `ask()` (queries of a budgetResolver), asked again after each ETIMEOUT while `budgetMs` lasts. */
export function withinBudget<T>(budgetMs: number, ask: () => Promise<T>): Promise<T> {
  const end = performance.now() + budgetMs;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error('DNS query timed out'), { code: 'ETIMEOUT' })), budgetMs);
  });
  const asking = (async () => {
    for (;;) {
      try {
        return await ask();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ETIMEOUT' || performance.now() >= end) throw err;
      }
    }
  })();
  asking.catch(() => {}); // once the budget is spent, what the last try says is not waited for
  return Promise.race([asking, late]).finally(() => clearTimeout(timer));
}

/**
 * The limits test servers run at where their config sets none (startTestServer, startCluster, the examples' copies):
 * apart from the server helpers, so that a helper starting `postern serve` does not load the server itself.
 */
import { isMap, parseDocument, type Document } from 'yaml';

/**
 * The limits a test server gets where its config sets none. At the product's defaults (100 ms a script call, 50 ms
 * a Redis round trip) a machine running four test files on two cores, descheduling the server for 100 ms, turned an
 * accept into 451 4.3.0 and failed tests that time nothing out. `dns.timeoutMs` keeps its default's value (80% of
 * 100 ms) so that tests waiting out a silent DNS name take no longer. A config that sets `sandbox.timeoutMs` is left
 * as it is, its `store` and `dns` too.
 */
export const UNHURRIED_LIMITS = { sandboxTimeoutMs: 10_000, redisTimeoutMs: 2_000, dnsTimeoutMs: 80 };

/** Whether a config leaves every limit to UNHURRIED_LIMITS: it sets no `sandbox`, no `dns` and no Redis `timeoutMs`. */
function takesUnhurriedLimits(doc: Document): boolean {
  return !doc.errors.length && isMap(doc.contents) && !doc.contents.flow
    && !doc.has('sandbox') && !doc.has('dns') && !doc.hasIn(['store', 'redis', 'timeoutMs']);
}

/**
 * The config with UNHURRIED_LIMITS, unless it sets `sandbox` or `dns` itself, or a Redis `timeoutMs` (or is not a
 * YAML mapping, for tests of a config refused). The lines are added at the end, so a position in a config error
 * stays where it was (only a Redis `timeoutMs` goes inside the test's own `store.redis`).
 */
export function withUnhurriedLimits(config: string): string {
  const doc = parseDocument(config);
  if (!takesUnhurriedLimits(doc)) return config;
  const added = `\nsandbox:\n  timeoutMs: ${UNHURRIED_LIMITS.sandboxTimeoutMs}\ndns:\n  timeoutMs: ${UNHURRIED_LIMITS.dnsTimeoutMs}\n`;
  if (!doc.hasIn(['store', 'redis'])) return config + added;
  doc.setIn(['store', 'redis', 'timeoutMs'], UNHURRIED_LIMITS.redisTimeoutMs);
  return doc.toString() + added;
}

/** UNHURRIED_LIMITS into a parsed config (a test's copy of an example), on the same terms as withUnhurriedLimits. */
export function setUnhurriedLimits(doc: Document): void {
  if (!takesUnhurriedLimits(doc)) return;
  doc.setIn(['sandbox', 'timeoutMs'], UNHURRIED_LIMITS.sandboxTimeoutMs);
  doc.setIn(['dns', 'timeoutMs'], UNHURRIED_LIMITS.dnsTimeoutMs);
  if (doc.hasIn(['store', 'redis'])) doc.setIn(['store', 'redis', 'timeoutMs'], UNHURRIED_LIMITS.redisTimeoutMs);
}

/**
 * What an unknown key of postern.yaml most likely meant, for its "Unrecognized key" line: a near miss of a key
 * of the same object (`localDomain` → `localDomains`, `maxConection` → `maxConnections`), else the same name
 * where the schema has it (`maxConnections` written beside `tls` instead of under `limits`). An administrator
 * reading only `Unrecognized key: "localDomain"` goes looking through the reference; Postfix's postconf names
 * no alternative either, but git, systemd and most CLIs do.
 */
import { createRequire } from 'node:module';

// The reference's walk of the schema (describe.ts, with the schema and zod), loaded by the first unknown key.
const configKeys = (): Array<{ path: string }> => (createRequire(import.meta.url)('./describe.ts') as typeof import('./describe.ts')).configKeys();

// The schema's key paths (`listeners[].limits.maxConnections`, `delivery.clientCertificates.<name>.cert`), read
// once and only when a configuration has an unknown key: building them walks the whole JSON Schema.
let knownPaths: string[] | undefined;
/** Longer than any key of the schema (the longest is about 30 characters), with room for a few typos. */
const LONGEST_KEY = 64;
const known = (): string[] => (knownPaths ??= configKeys().map((k) => k.path));

/** The text to append to the message (` (did you mean "…"?)`), or '' when nothing is close enough. */
export function keySuggestion(parent: ReadonlyArray<PropertyKey>, key: string): string {
  // No key of the schema is this long: a key of thousands of characters (a paste gone wrong) was compared letter by
  // letter with every key of its object, minutes of CPU for a few of them, in the check and in a running server's reload.
  if (key.length > LONGEST_KEY) return '';
  const paths = known();
  const at = schemaPath(parent, paths);
  if (at === null) return '';
  const prefix = at ? `${at}.` : '';
  const siblings = paths.filter((p) => p.startsWith(prefix) && /^[A-Za-z0-9_]+$/.test(p.slice(prefix.length))).map((p) => p.slice(prefix.length));
  const near = closest(key, siblings);
  if (near) return ` (did you mean "${near}"?)`;
  // The right name in the wrong place (`maxConnections` beside `tls`, `dataDir` indented under a listener): the
  // object that has it and shares most of its path with this one.
  const parentOf = (p: string): string => (p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '');
  const nameOf = (p: string): string => p.slice(p.lastIndexOf('.') + 1);
  const elsewhere = paths
    .filter((p) => nameOf(p).toLowerCase() === key.toLowerCase() && parentOf(p) !== at)
    .sort((a, b) => sharedLength(parentOf(b), at) - sharedLength(parentOf(a), at))[0];
  if (elsewhere) return parentOf(elsewhere) ? ` ("${nameOf(elsewhere)}" is a key of ${parentOf(elsewhere)})` : ` ("${nameOf(elsewhere)}" is a top-level key)`;
  return '';
}

/** `['listeners', 0, 'limits']` → `listeners[].limits`; a map's own names become `<name>`; null when not in the schema. */
function schemaPath(parent: ReadonlyArray<PropertyKey>, paths: string[]): string | null {
  let at = '';
  for (const segment of parent) {
    if (typeof segment === 'number') { at += '[]'; continue; }
    const named = at ? `${at}.${String(segment)}` : String(segment);
    const mapEntry = `${at}.<name>`;
    if (paths.some((p) => p === named || p.startsWith(`${named}.`) || p.startsWith(`${named}[]`))) at = named;
    else if (at && paths.some((p) => p === mapEntry || p.startsWith(`${mapEntry}.`))) at = mapEntry;
    else return null;
  }
  return at;
}

const sharedLength = (a: string, b: string): number => {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
};

/** The candidate with the fewest edits from `key` (letters' case ignored), within a bound that grows with its length. */
function closest(key: string, candidates: string[]): string | null {
  const allowed = key.length <= 4 ? 1 : key.length <= 9 ? 2 : 3;
  let best: string | null = null;
  let bestDistance = allowed + 1;
  for (const c of candidates) {
    if (Math.abs(c.length - key.length) > allowed) continue; // as many edits at least: not near
    const d = editDistance(key.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) { best = c; bestDistance = d; }
  }
  return best;
}

/** Insertions, deletions, substitutions and swaps of two neighbours (optimal string alignment). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

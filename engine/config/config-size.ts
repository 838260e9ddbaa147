/**
 * A bound on what postern.yaml may hold, checked before it is parsed. The YAML parse is one synchronous call of
 * some 20 to 50 µs a node, run by every process of `postern serve` at once at a reload (and at a start): a list
 * of 100,000 local domains (`localDomains: [$(paste -sd, domains)]`, 2 MB on one line) held each event loop for
 * 2 to 5 s, past the workers' 1 s watchdog, which killed them with their connections, and again when they started.
 * Refused instead, naming the file and its fullest line, before any of it is parsed.
 */

/** Bytes read at most: far more than MAX_CONFIG_ITEMS of any real entry. */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/**
 * Lines and flow items (`,`) a configuration may have, an upper bound on its YAML nodes: parsed in about half a
 * second at most. A real configuration has a few hundred.
 */
export const MAX_CONFIG_ITEMS = 10_000;

/** Null, or where and why `text` is too large to parse on an event loop that serves mail. */
export function configSizeProblem(text: string): { line: number; message: string } | null {
  let items = 0;
  let line = 1;
  let fullest = { line: 1, items: 0 };
  let onLine = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 44 /* , */) onLine++;
    else if (c !== 10 /* \n */) continue;
    items++;
    if (c === 10) {
      if (onLine > fullest.items) fullest = { line, items: onLine };
      line++;
      onLine = 0;
    }
  }
  if (onLine > fullest.items) fullest = { line, items: onLine };
  if (items <= MAX_CONFIG_ITEMS) return null;
  const where = fullest.items > 1 ? ` (line ${fullest.line} has ${fullest.items + 1} items)` : '';
  return {
    line: fullest.line,
    message: `${items} lines and list items, more than the ${MAX_CONFIG_ITEMS} a configuration may have${where}: parsed at once, every process would stop serving mail for seconds; keep long lists short (a table file)`,
  };
}

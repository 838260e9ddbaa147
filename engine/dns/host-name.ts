/**
 * A host name in lowercase ASCII as DNS holds it: labels of letters, digits, hyphens (not first or last) and
 * underscores (some sites use them), each at most 63 characters, at most 253 in all.
 */
const LABELS = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

export function isHostName(name: string): boolean {
  return name.length <= 253 && LABELS.test(name);
}

/**
 * Whether getaddrinfo (delivery.hostLookup native) would read `name` as an address rather than look it up: its last
 * label is a number (`127.1`, `2130706433`, `0177.0.0.1`: inet_aton's short, decimal and octal forms) or hex
 * (`0x7f000001`). No top-level domain is numeric (RFC 3696 §2), so no real host has such a name; Postfix refuses an
 * all-numeric one too ("numeric hostname").
 */
export function readsAsAddress(name: string): boolean {
  return /(?:^|\.)(?:\d+|0x[0-9a-f]*)$/i.test(name);
}

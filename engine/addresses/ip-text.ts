/**
 * One text form per IP address (RFC 5952): how Node names IPv6 peers, and how Postern writes every IPv6
 * address it reads elsewhere (a PROXY header's bytes, a certificate's iPAddress name, a policy request, a
 * table key), so that one client is one key to every per-address rule, and one name in logs and scripts.
 */
import { isIPv4, isIPv6 } from 'node:net';

/**
 * RFC 5952 text of eight 16-bit groups: lowercase hex, the longest run of two or more zero groups (the first of
 * equals) as `::`, and an IPv4-mapped address as `::ffff:a.b.c.d` (§5): the text Node gives a peer's address.
 */
export function ipv6Text(groups: readonly number[]): string {
  let best = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) { best = i; bestLength = j - i; }
    i = j;
  }
  // As libuv's inet_ntop (BIND's) writes a peer: a mapped or IPv4-compatible address with its IPv4 part dotted.
  if (best === 0 && (bestLength === 6 || (bestLength === 5 && groups[5] === 0xffff))) {
    return `::${bestLength === 5 ? 'ffff:' : ''}${dotted(groups[6]!, groups[7]!)}`;
  }
  const hex = (gs: readonly number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (best < 0) return hex(groups);
  return `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLength))}`;
}

/** The eight groups of 16 bytes of an IPv6 address in network order (a PROXY v2 block, a certificate's iPAddress). */
export function ipv6Groups(bytes: Uint8Array): number[] {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  return groups;
}

/** The eight 16-bit groups of a valid IPv6 address's text (`::` expanded, a trailing dotted IPv4 part as two groups, a zone dropped). */
export function ipv6TextGroups(ip: string): number[] {
  let text = ip.toLowerCase();
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  const tail4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (tail4) {
    const [a, b, c, d] = tail4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, tail4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const front = head ? head.split(':') : [];
  const back = tail === undefined ? [] : tail ? tail.split(':') : [];
  const missing = 8 - front.length - back.length;
  return [...front, ...Array<string>(tail === undefined ? 0 : missing).fill('0'), ...back].map((g) => parseInt(g, 16));
}

/**
 * One spelling per client address, as Node names a peer and as the SMTP listeners give it to limits, scripts,
 * logs and Received: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, `0:0:0:0:0:FFFF:c000:201`) as the IPv4
 * one, any other IPv6 address in its RFC 5952 text; a zone is kept. Not an IP address: as given.
 * For addresses that come in as text (a Postfix policy request, a table key, a script's argument): written
 * another way, one client was another key to every per-address rule, and a table entry matched no client.
 */
export function canonicalIp(text: string): string {
  if (isIPv4(text) || !text.includes(':') || !isIPv6(text)) return text;
  const zone = text.indexOf('%');
  const groups = ipv6TextGroups(text);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) return dotted(groups[6]!, groups[7]!);
  return ipv6Text(groups) + (zone >= 0 ? text.slice(zone) : '');
}

function dotted(high: number, low: number): string {
  return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
}

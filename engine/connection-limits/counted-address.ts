/**
 * The address a client's connections and failed authentications are counted under. An IPv4 client is
 * counted by its address. An IPv6 client is counted by its network (`limits.ipv6PrefixLength`, default
 * 64): a host is usually given a whole /64, and every address in it is its own, so counting per address
 * let one client open `maxConnectionsPerIp` connections, and make `authFailuresPerIp` guesses, from each
 * of 2^64 addresses. mox counts IPv6 clients by /64 too; Postfix 3.9 by `smtpd_client_ipv6_prefix_length`.
 */
import { isIPv6 } from 'node:net';

/** A socket's remoteAddress as counted: an IPv4-mapped IPv6 address as the IPv4 one, IPv6 by its network. */
export function countedRemoteAddress(remoteAddress: string, ipv6PrefixLength: number): string {
  return countedAddress(remoteAddress.replace(/^::ffff:(?=\d+\.)/i, '').toLowerCase(), ipv6PrefixLength);
}

/** `ip` as counted: itself for IPv4 (and for IPv6 with a prefix of 128), else its network as `<address>/<prefix>`. */
export function countedAddress(ip: string, ipv6PrefixLength: number): string {
  if (ipv6PrefixLength >= 128 || !ip.includes(':') || !isIPv6(ip)) return ip;
  const groups = hextets(ip);
  const out: string[] = [];
  for (let i = 0; i < 8; i++) {
    const keep = Math.max(0, Math.min(16, ipv6PrefixLength - 16 * i)); // bits of this group inside the prefix
    const mask = keep === 0 ? 0 : (0xffff << (16 - keep)) & 0xffff;
    out.push((groups[i]! & mask).toString(16));
  }
  return `${compress(out)}/${ipv6PrefixLength}`;
}

/** The eight 16-bit groups of a valid IPv6 address (`::` expanded, a trailing dotted IPv4 part as two groups). */
function hextets(ip: string): number[] {
  let text = ip.toLowerCase();
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const front = head ? head.split(':') : [];
  const back = tail === undefined ? [] : tail ? tail.split(':') : [];
  const missing = 8 - front.length - back.length;
  return [...front, ...Array<string>(tail === undefined ? 0 : missing).fill('0'), ...back].map((g) => parseInt(g, 16));
}

/** RFC 5952 text of eight groups: the longest run of two or more zero groups (the first of equals) as `::`. */
function compress(groups: string[]): string {
  let best = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLength) { best = i; bestLength = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLength).join(':')}`;
}

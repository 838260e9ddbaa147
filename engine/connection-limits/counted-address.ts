/**
 * The address a client's connections and failed authentications are counted under. An IPv4 client is
 * counted by its address. An IPv6 client is counted by its network (`limits.ipv6PrefixLength`, default
 * 64): a host is usually given a whole /64, and every address in it is its own, so counting per address
 * let one client open `maxConnectionsPerIp` connections, and make `authFailuresPerIp` guesses, from each
 * of 2^64 addresses. mox counts IPv6 clients by /64 too; Postfix 3.9 by `smtpd_client_ipv6_prefix_length`.
 */
import { isIPv4, isIPv6 } from 'node:net';

/**
 * One spelling per client address, as Node names a peer and as the SMTP listeners give it to limits, scripts,
 * logs and Received: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, `0:0:0:0:0:FFFF:c000:201`) as the IPv4
 * one, any other IPv6 address lowercase and compressed (RFC 5952); a zone is kept. Not an IP address: as given.
 * For addresses that come in as text (a Postfix policy request, a table key, a script's argument): written
 * another way, one client was another key to every per-address rule, and a table entry matched no client.
 */
export function canonicalIp(text: string): string {
  if (isIPv4(text) || !text.includes(':') || !isIPv6(text)) return text;
  const zone = text.indexOf('%');
  const groups = hextets(text);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `${groups[6]! >> 8}.${groups[6]! & 0xff}.${groups[7]! >> 8}.${groups[7]! & 0xff}`;
  }
  return compress(groups.map((g) => g.toString(16))) + (zone >= 0 ? text.slice(zone) : '');
}

/** `ip` as counted: itself for IPv4 (and for IPv6 with a prefix of 128), else its network as `<address>/<prefix>`; in one spelling (canonicalIp). */
export function countedAddress(ip: string, ipv6PrefixLength: number): string {
  ip = canonicalIp(ip);
  if (ipv6PrefixLength >= 128 || !ip.includes(':')) return ip;
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

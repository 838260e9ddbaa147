/**
 * The address a client's connections and failed authentications are counted under. An IPv4 client is
 * counted by its address. An IPv6 client is counted by its network (`limits.ipv6PrefixLength`, default
 * 64): a host is usually given a whole /64, and every address in it is its own, so counting per address
 * let one client open `maxConnectionsPerIp` connections, and make `authFailuresPerIp` guesses, from each
 * of 2^64 addresses. mox counts IPv6 clients by /64 too; Postfix 3.9 by `smtpd_client_ipv6_prefix_length`.
 */
import { canonicalIp, ipv6Text, ipv6TextGroups } from '../addresses/ip-text.ts';

/** `ip` as counted: itself for IPv4 (and for IPv6 with a prefix of 128), else its network as `<address>/<prefix>`; in one spelling (canonicalIp). */
export function countedAddress(ip: string, ipv6PrefixLength: number): string {
  ip = canonicalIp(ip);
  if (ipv6PrefixLength >= 128 || !ip.includes(':')) return ip;
  const groups = ipv6TextGroups(ip);
  const out: number[] = [];
  for (let i = 0; i < 8; i++) {
    const keep = Math.max(0, Math.min(16, ipv6PrefixLength - 16 * i)); // bits of this group inside the prefix
    const mask = keep === 0 ? 0 : (0xffff << (16 - keep)) & 0xffff;
    out.push(groups[i]! & mask);
  }
  return `${ipv6Text(out)}/${ipv6PrefixLength}`;
}

/** The addresses a listener takes PROXY headers from (`proxyProtocol.trusted`), as a node:net BlockList. */
import { BlockList, isIPv4, isIPv6 } from 'node:net';

/** `a.b.c.d`, `a.b.c.d/n`, `x::y`, `x::y/n`: null when it is none of these. */
export function parseCidr(text: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | null {
  const [address, bits, extra] = text.trim().split('/');
  if (extra !== undefined || !address) return null;
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : null;
  if (!family) return null;
  const max = family === 'ipv4' ? 32 : 128;
  if (bits !== undefined && !/^\d{1,3}$/.test(bits)) return null;
  const prefix = bits === undefined ? max : Number(bits);
  return prefix <= max ? { address, prefix, family } : null;
}

/**
 * Whether the CIDR `text` takes a header from every client: `0.0.0.0/0`, `::/0`, or an IPv6 network that
 * holds all of ::ffff:0:0/96 (`::ffff:0.0.0.0/96`, `::/64`): every IPv4 client of a dual-stack listener is
 * named in that range, and the check of a peer is made in both spellings.
 */
export function trustsEveryClient(text: string): boolean {
  const cidr = parseCidr(text);
  if (!cidr) return false;
  if (cidr.prefix === 0) return true;
  const one = new BlockList();
  one.addSubnet(cidr.address, cidr.prefix, cidr.family);
  return one.check('0.0.0.0', 'ipv4') && one.check('255.255.255.255', 'ipv4');
}

/** The decision line's reason for a connection from an address the list does not hold: the key an operator edits. */
export const UNTRUSTED_PROXY_REASON = 'listeners.proxyProtocol.trusted: not a trusted proxy';

export class TrustedProxies {
  readonly #list = new BlockList();

  constructor(cidrs: readonly string[]) {
    for (const text of cidrs) {
      const cidr = parseCidr(text);
      if (!cidr) throw new Error(`not an address or CIDR: ${text}`);
      this.#list.addSubnet(cidr.address, cidr.prefix, cidr.family);
    }
  }

  /** `address` as Node names a peer (an IPv4 client of a dual-stack socket as ::ffff:a.b.c.d). */
  has(address: string | undefined): boolean {
    if (!address) return false;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped) return this.#list.check(mapped[1]!, 'ipv4');
    return this.#list.check(address, isIPv4(address) ? 'ipv4' : 'ipv6');
  }
}

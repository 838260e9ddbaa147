/**
 * The default route of a recipient domain: the configured smarthost, or the domain's MX hosts (lowest
 * preference first, equal preferences shuffled), falling back to the domain's own A/AAAA records. A
 * route that cannot be used carries its failure, which applies unless a pre-delivery script overrides it.
 */
import { isIP } from 'node:net';
import type { DeliveryConfig } from '../config/schema.ts';
import { HostNotFound, type DeliveryResolver } from './dns.ts';
import { isHostName, readsAsAddress } from '../dns/host-name.ts';
import { DeliveryFailure } from './outcome.ts';

export interface NextHop {
  /** Host name (or address literal) to connect to; also the TLS server name unless overridden. */
  host: string;
  port: number;
  implicitTls: boolean;
  /** Addresses already known (address literals, the A/AAAA fallback); looked up at connect time otherwise. */
  addresses?: string[];
}

export interface Route {
  kind: 'smarthost' | 'mx';
  /** Recipient domain, lowercased. */
  domain: string;
  /** Hosts to try in order. */
  hops: NextHop[];
  /** Why the default route is unusable, if it is. */
  failure: DeliveryFailure | null;
}

/** Recipient domain of an address (after the last @), lowercased; `''` when there is none. */
export function recipientDomain(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

/** Recipients grouped by domain, in first-seen order. */
export function groupByDomain(recipients: readonly string[]): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  for (const r of recipients) {
    const d = recipientDomain(r);
    const g = groups.get(d);
    if (g) g.push(r);
    else groups.set(d, [r]);
  }
  return groups;
}

/** `[192.0.2.1]` or `[IPv6:2001:db8::1]` → the address; otherwise null. */
export function addressLiteral(domain: string): string | null {
  const m = /^\[(?:ipv6:)?([0-9a-f:.]+)\]$/i.exec(domain);
  return m && isIP(m[1]!) ? m[1]! : null;
}

export async function defaultRoute(delivery: DeliveryConfig, domain: string, resolver: DeliveryResolver): Promise<Route> {
  const route = delivery.route;
  if ('smarthost' in route) {
    const s = route.smarthost;
    return { kind: 'smarthost', domain, hops: [{ host: s.host, port: s.port, implicitTls: s.implicitTls }], failure: null };
  }
  const port = route.port;
  const unusable = (failure: DeliveryFailure): Route => ({ kind: 'mx', domain, hops: [{ host: domain, port, implicitTls: false }], failure });
  if (!domain) return unusable(new DeliveryFailure('Recipient address has no domain', { permanent: true, enhanced: '5.1.3' }));
  const literal = addressLiteral(domain);
  if (literal) return { kind: 'mx', domain, hops: [{ host: literal, port, implicitTls: false, addresses: [literal] }], failure: null };
  try {
    const records = await resolver.mx(domain);
    // Null MX (RFC 7505): also when it is there more than once (`0 .` and `10 .`), which left no host to try (4.4.1, retried for days).
    if (records.length && records.every((r) => r.exchange === '' || r.exchange === '.')) {
      return unusable(new DeliveryFailure(`Domain ${domain} does not accept mail (null MX)`, { permanent: true, enhanced: '5.1.10' }));
    }
    // An MX record names a host (RFC 1035 3.3.9). One that reads as an address, or is no host name at all, is not
    // used, as Postfix ("numeric" or "malformed domain name in resource data of MX record") and Exim
    // (allow_mx_to_ip false) refuse it: an address was connected to with no lookup made, and a name with a space
    // or a comma, or node:dns's escapes (`a\.b`, `\013`), was looked up as it came (a label with a dot in it
    // asked for; the others a name service error, deferred again on every attempt). A name whose last label is a
    // number (`127.1`, `2130706433`) is an address too: with hostLookup native, getaddrinfo connected to it unasked.
    const invalid = records.filter((r) => r.exchange && (isIP(r.exchange) || readsAsAddress(r.exchange) || !isHostName(r.exchange)));
    const usable = records.filter((r) => r.exchange && !invalid.includes(r));
    if (records.length && !usable.length && invalid.length) {
      return unusable(new DeliveryFailure(`MX records of ${domain} name no valid host (${invalid.map((r) => JSON.stringify(r.exchange)).join(', ')}): not used`, { permanent: false, enhanced: '4.4.4' }));
    }
    if (records.length) {
      const sorted = shuffle(usable).sort((a, b) => a.priority - b.priority);
      const hosts = [...new Set(sorted.map((r) => r.exchange))];
      return { kind: 'mx', domain, hops: hosts.map((host) => ({ host, port, implicitTls: false })), failure: null };
    }
    // No MX: the domain's own addresses (RFC 5321 5.1); a domain without them does not take mail.
    const addresses = await resolver.addresses(domain).catch((err: unknown) => {
      if (err instanceof HostNotFound) {
        throw new DeliveryFailure(`Host or domain name not found. Name service error for name=${domain} type=A: no MX and no address`, { permanent: true, enhanced: '5.1.2' });
      }
      throw err;
    });
    return { kind: 'mx', domain, hops: [{ host: domain, port, implicitTls: false, addresses }], failure: null };
  } catch (err) {
    if (err instanceof DeliveryFailure) return unusable(err);
    throw err;
  }
}

function shuffle<T>(list: T[]): T[] {
  const out = list.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

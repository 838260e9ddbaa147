/**
 * The client's host name for smtp-server's reverse lookup (listeners' `reverseDns`), forward-confirmed as
 * Postfix does (FCrDNS): a PTR name counts only when that name's A (or AAAA) records include the client's
 * address. Whoever controls an address's reverse zone can make it say anything: unconfirmed, "mail.bank.example"
 * appeared in Received headers (which downstream filters, such as SpamAssassin's whitelist_from_rcvd, take
 * as the relay's verified name), in log lines and in the EHLO reply. Unconfirmed, the client is `unknown`.
 */
import { promises as dns } from 'node:dns';
import { isIPv4, isIPv6 } from 'node:net';
import { canonicalIp } from '../addresses/ip-text.ts';

type ReverseCallback = (err: Error | null, hostnames?: string[]) => void;

/** smtp-server's `resolver` option: only `reverse` is used. */
export interface ReverseResolver { reverse(ip: string, callback: ReverseCallback): void }

/** PTR names tried, in the order given: a client's zone may list many, each costing a forward query. */
const MAX_NAMES = 3;

export const forwardConfirmedReverse: ReverseResolver = {
  reverse(ip, callback) {
    confirmedNames(ip).then((names) => callback(null, names), (err: Error) => callback(err));
  },
};

/** The PTR names of `ip` whose forward records name `ip` again (at most one: the first confirmed). */
export async function confirmedNames(ip: string): Promise<string[]> {
  const v4 = isIPv4(ip);
  if (!v4 && !isIPv6(ip)) return [];
  const names = (await dns.reverse(ip)).slice(0, MAX_NAMES);
  const wanted = canonicalIp(ip);
  const confirmed = await Promise.all(names.map(async (name) => {
    try {
      const addresses = v4 ? await dns.resolve4(name) : await dns.resolve6(name);
      return addresses.some((a) => canonicalIp(a) === wanted);
    } catch {
      return false; // no such name, no address of that family, or no answer: not confirmed
    }
  }));
  const first = names.find((_, i) => confirmed[i]);
  return first === undefined ? [] : [first];
}

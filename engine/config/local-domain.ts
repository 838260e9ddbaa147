/**
 * What a `localDomains` entry may be, and what a DKIM configuration may hold: rules of the configuration that the
 * engine applies outside the schema too. Their own module, so that those users do not load the schema and zod
 * (a process of `postern serve` handed its supervisor's parse loads neither: start-config.ts).
 */
import { isHostName } from '../dns/host-name.ts';
import { domainKey } from '../policy/domain-key.ts';

/** A `localDomains` entry a recipient's domain can equal: a name (any IDN spelling) or an address literal. */
export const isLocalDomain = (d: string): boolean => {
  const key = domainKey(d);
  return isHostName(key) || (key.length <= 253 && /^\[[0-9a-f:.]+\]$|^\[ipv6:[0-9a-f:.]+\]$/.test(key));
};

/** Signatures one delivery may carry (one per key: an RSA and an Ed25519 key is the usual pair, RFC 8463 §4). */
export const MAX_DKIM_SIGNATURES = 8;

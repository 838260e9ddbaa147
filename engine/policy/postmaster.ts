/**
 * RFC 5321 §4.5.1: every SMTP server must accept mail for the bare `postmaster` (no domain, any case).
 * As Postfix rewrites it to `postmaster@$myorigin`, Postern rewrites it to `postmaster@` the configuration's
 * first local domain, else its `hostname`, before any rule or script sees it.
 */
import type { Config } from '../config/schema.ts';
import { domainKey } from './domain-key.ts';

/** Parsed recipients that were the bare postmaster (the relay rule accepts them whatever the listener). */
const barePostmasters = new WeakSet<object>();

/**
 * The domain the bare postmaster is rewritten to: the first of `localDomains`, else `hostname`, as A-labels (an
 * IDN written `bücher.example` made the address non-ASCII: refused as undeclared UTF-8 in an ASCII transaction).
 */
export function postmasterDomain(config: Pick<Config, 'localDomains' | 'hostname'>): string {
  const name = config.localDomains[0] ?? config.hostname;
  return domainKey(name) || name.toLowerCase();
}

/** Rewrites `recipient.address` if it is the bare postmaster; true when it did. */
export function rewriteBarePostmaster(recipient: { address: string }, config: Pick<Config, 'localDomains' | 'hostname'>): boolean {
  if (recipient.address.toLowerCase() !== 'postmaster') return false;
  recipient.address = `postmaster@${postmasterDomain(config)}`;
  barePostmasters.add(recipient);
  return true;
}

/** Whether this parsed recipient was given as the bare postmaster (see rewriteBarePostmaster). */
export function wasBarePostmaster(recipient: object): boolean {
  return barePostmasters.has(recipient);
}

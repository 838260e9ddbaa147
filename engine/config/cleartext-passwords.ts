/**
 * Listeners whose password logins cross the network in clear text: PLAIN or LOGIN offered on `tls.mode: none`
 * (a TLS listener refuses them before TLS, with 538) and bound to more than loopback. Postfix allows this
 * (smtpd_tls_auth_only = no); Dovecot refuses it outside loopback by default. Not refused here: a balancer
 * that ends TLS in front of a `proxyProtocol` listener is a sound set-up. So said, at the key's line.
 */
import { BlockList } from 'node:net';
import type { Config } from './schema.ts';

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
LOOPBACK.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

/** Only the host itself can reach `address:port` (a name other than `localhost` may resolve anywhere). */
function loopbackOnly(listen: string): boolean {
  const host = listen.slice(0, listen.lastIndexOf(':')).replace(/^\[(.*)\]$/, '$1');
  if (host.toLowerCase() === 'localhost') return true;
  try {
    return LOOPBACK.check(host, host.includes(':') ? 'ipv6' : 'ipv4');
  } catch {
    return false;
  }
}

export interface CleartextPasswords {
  /** Index in `config.listeners`. */
  listener: number;
  message: string;
}

export function cleartextPasswordListeners(config: Config): CleartextPasswords[] {
  const out: CleartextPasswords[] = [];
  config.listeners.forEach((l, i) => {
    const passwords = l.auth.mechanisms.filter((m) => m !== 'EXTERNAL');
    if (l.tls.mode !== 'none' || !passwords.length || loopbackOnly(l.listen)) return;
    out.push({
      listener: i,
      message: `${passwords.join(' and ')} on tls.mode none: passwords cross the network in clear text, readable by anyone on the path; set tls.mode starttls or implicit, or listen on loopback${l.proxyProtocol ? ' (or make sure the balancer ends TLS)' : ''}`,
    });
  });
  return out;
}

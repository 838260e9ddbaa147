/**
 * Configurations that expose more than their author likely meant, said (at the key's line) by a start, a
 * reload and `postern check` rather than refused, since each has one sound use:
 * - PLAIN or LOGIN on `tls.mode: none` beyond loopback, or behind PROXY protocol: passwords in clear text (a TLS
 *   listener refuses them before TLS, with 538). Postfix allows it (smtpd_tls_auth_only = no), Dovecot refuses it
 *   outside loopback; sound behind a balancer that ends TLS.
 * - A submission port (587, 465) without `auth.required`: RFC 6409 §4.3 has an MSA refuse MAIL before a login
 *   by default; without it the port takes anyone's mail for the local domains, as an MX does, past whatever
 *   the MX listener checks. Sound when a script requires the login itself.
 * - A policy service on TCP beyond loopback: its protocol has no authentication, so anyone who reaches it
 *   can ask in a client's name (burning that client's `rate()` counts, learning the verdicts).
 * - A default outbound client certificate on `delivery.tls.mode: may`: a next hop without STARTTLS, or an attacker
 *   who strips it, gets the mail in plaintext and no certificate (a relay that relays for the certificate then
 *   refuses it: a bounce). Postfix does the same at `may`; sound for MX delivery where some hosts ask for one.
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

const SUBMISSION_PORTS = new Set([587, 465]);

export interface Exposure {
  /** The key the warning is about, as a path into the configuration. */
  path: PropertyKey[];
  /** The listener or policy service it concerns (none: delivery). */
  name?: string;
  message: string;
}

export function exposures(config: Config): Exposure[] {
  const out: Exposure[] = [];
  config.listeners.forEach((l, i) => {
    const passwords = l.auth.mechanisms.filter((m) => m !== 'EXTERNAL');
    // Behind PROXY protocol the clients are the balancer's, wherever it listens: a loopback address proves nothing.
    if (l.tls.mode === 'none' && passwords.length && (l.proxyProtocol || !loopbackOnly(l.listen))) {
      out.push({
        path: ['listeners', i, 'auth', 'mechanisms'],
        name: l.name,
        message: `${passwords.join(' and ')} on tls.mode none: passwords cross the network in clear text, readable by anyone on the path; set tls.mode starttls or implicit, or listen on loopback${l.proxyProtocol ? ' (or make sure the balancer ends TLS)' : ''}`,
      });
    }
    const port = Number(l.listen.slice(l.listen.lastIndexOf(':') + 1));
    if (SUBMISSION_PORTS.has(port) && !l.auth.required) {
      out.push({
        path: ['listeners', i, 'listen'],
        name: l.name,
        message: `port ${port} is for submission, but auth.required is false: any client may send here without a login, to the local domains as to an MX (RFC 6409 §4.3: refuse MAIL before a login); set auth.required: true`,
      });
    }
  });
  config.policyServices.forEach((p, i) => {
    if (p.listen.startsWith('unix:') || loopbackOnly(p.listen)) return;
    out.push({
      path: ['policyServices', i, 'listen'],
      name: p.name,
      message: 'the policy protocol has no authentication: anyone who reaches this address can ask in any client\'s name (using up its rate() counts, learning the verdicts); listen on loopback or a unix socket',
    });
  });
  const tls = config.delivery.tls;
  if (config.delivery.enabled && tls.mode === 'may' && tls.clientCertificate !== undefined) {
    out.push({
      path: ['delivery', 'tls', 'clientCertificate'],
      message: 'presented on tls.mode may (the default): a next hop that does not offer STARTTLS, or an attacker on the path who strips it, gets the mail in plaintext and no certificate, and a relay that relays for the certificate then refuses it (the mail bounces); set tls.mode encrypt or verify, or let a predelivery script choose the mode per destination',
    });
  }
  return out;
}

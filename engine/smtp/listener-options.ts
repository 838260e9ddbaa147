/**
 * Translates a listener's configuration into smtp-server options: TLS material, client-certificate
 * request, mechanisms, limits. Certificates are read here so that a bad file fails the (re)load.
 */
import { forwardConfirmedReverse } from '../dns/confirmed-reverse.ts';
import { smtpServerLogger } from '../logging/smtp-server-logger.ts';
import { constants, X509Certificate } from 'node:crypto';
import type { SMTPServerOptions } from 'smtp-server';
import type { ListenerConfig } from '../config/schema.ts';
import { loadTrustMaterial, loadKeyPair, TrustedIssuers, TlsFileError } from '../certificates/index.ts';
import { createSecureContext } from 'node:tls';
import type { ListenerSetup } from './postern-server.ts';
import { reply } from './replies.ts';
import { TrustedProxies } from '../proxy-protocol/trusted-proxies.ts';
import type { Logger } from '../logging/logger.ts';

export interface ListenerTls {
  /** Problems that do not stop the listener (an expired CRL, an expired CA). */
  warnings?: string[];
  key?: string;
  cert?: string;
  ca?: string[];
  crl?: string[];
}

/** Read and check the listener's TLS files; `pkiCrl`: pki.dir's CRL, served in place of an older copy of it (loadTrustMaterial). */
export async function loadListenerTls(l: ListenerConfig, pkiCrl?: string): Promise<ListenerTls> {
  if (l.tls.mode === 'none') return {};
  const pair = await loadKeyPair(l.tls.cert!, l.tls.key!);
  const trust = l.tls.clientCertificates === 'none'
    ? { ca: [], crl: [], warnings: [] }
    : await loadTrustMaterial({ caFiles: l.tls.caFiles, crlFiles: l.tls.crlFiles, forClients: true, ...(pkiCrl ? { pkiCrl } : {}) });
  const tls = { key: pair.key, cert: pair.cert, ca: trust.ca, crl: trust.crl.length ? trust.crl : undefined, warnings: trust.warnings };
  // The key pair as the listener's OpenSSL takes it, as each process's start does: whatever it refuses is refused here
  // (by a check, a start, a reload: the running configuration stays), never first met by a process starting. (Each
  // CA and CRL block was read by OpenSSL in loadTrustMaterial; a context of a whole bundle would cost the loop more.)
  try {
    createSecureContext({ key: tls.key, cert: tls.cert });
  } catch (err) {
    throw new TlsFileError(l.tls.cert!, 'cert', `OpenSSL refuses this certificate with its key ${l.tls.key}: ${(err as Error).message}`);
  }
  return tls;
}

/** The listener's key (below the listener) that names the file a TlsFileError is about, e.g. `['tls', 'caFiles', 1]`. */
export function listenerTlsKey(l: ListenerConfig, err: TlsFileError): PropertyKey[] {
  if (err.role === 'cert' || err.role === 'key') return ['tls', err.role];
  const files = err.role === 'ca' ? l.tls.caFiles : l.tls.crlFiles;
  const index = files.indexOf(err.file);
  return ['tls', err.role === 'ca' ? 'caFiles' : 'crlFiles', ...(index < 0 ? [] : [index])];
}

export function greetingDelay(l: ListenerConfig): number {
  // Submission clients wait for nobody; on inbound a short pause catches clients that talk first.
  return l.limits.greetingDelayMs ?? (l.auth.mechanisms.length || l.auth.required ? 0 : 100);
}

export function listenerOptions(l: ListenerConfig, tls: ListenerTls, hostname: string, logger: Logger): SMTPServerOptions {
  const tlsOn = l.tls.mode !== 'none';
  const asking = tlsOn && l.tls.clientCertificates !== 'none';
  const mechanisms = l.auth.mechanisms.filter((m) => m !== 'EXTERNAL');
  const options: SMTPServerOptions & Record<string, unknown> = {
    name: hostname,
    banner: l.banner ?? 'Postern',
    logger: smtpServerLogger(logger.child({ component: 'smtp', listener: l.name })) as unknown as SMTPServerOptions['logger'],
    secure: l.tls.mode === 'implicit',
    hideSTARTTLS: l.tls.mode !== 'starttls',
    disabledCommands: l.auth.mechanisms.length ? [] : ['AUTH'],
    // EXTERNAL is ours; smtp-server only needs the mechanisms it implements (an empty list means its default).
    authMethods: mechanisms.length ? mechanisms : ['PLAIN'],
    authOptional: !l.auth.required,
    // smtp-server's own refusal of commands before AUTH: the catalogue's reply (send() logs it with its reason).
    authRequiredMessage: reply('authRequired').message,
    // We refuse password AUTH before TLS ourselves, with 538 5.7.11.
    allowInsecureAuth: true,
    hideENHANCEDSTATUSCODES: false,
    hideDSN: false,
    hidePIPELINING: false,
    size: l.limits.maxMessageSize,
    maxRecipients: l.limits.maxRecipients,
    maxClients: l.limits.maxConnections,
    socketTimeout: l.limits.socketTimeoutMs,
    closeTimeout: 5_000,
    disableReverseLookup: !l.reverseDns,
    // A PTR name only when its forward records give the client's address back (Postfix's verified client name).
    resolver: forwardConfirmedReverse,
    useXClient: false,
    useXForward: false,
    ...(tlsOn ? {
      key: tls.key,
      cert: tls.cert,
      minVersion: l.tls.minVersion,
      // An explicit (possibly empty) CA list: Node must never fall back to the public roots.
      ca: asking ? tls.ca ?? [] : undefined,
      crl: asking ? tls.crl : undefined,
      requestCert: asking,
      // No session tickets where client certificates are asked for: a resumed session skips the chain and
      // CRL check, so a certificate revoked since (CRLs reload at once) would still be accepted. Every
      // connection is verified against the current CA and CRLs. (Also spares each handshake two tickets.)
      secureOptions: serverTlsOptions(asking),
      // Never let OpenSSL refuse: pins must be able to accept untrusted certificates; `strict` is ours.
      rejectUnauthorized: false,
    } : {}),
  };
  return options;
}


/**
 * OpenSSL options of every server context: no session tickets where client certificates are asked for (see
 * listenerOptions), and never a client-initiated TLS 1.2 renegotiation: each is a full handshake's CPU on a
 * connection that already holds its slot (Node allowed three per connection), and it could swap the client
 * certificate under facts taken from the first handshake. Postfix refuses it too (NO_RENEGOTIATION).
 */
export function serverTlsOptions(askingForCertificates: boolean): number {
  return constants.SSL_OP_NO_RENEGOTIATION | (askingForCertificates ? constants.SSL_OP_NO_TICKET : 0);
}

/** Everything the listener's server is built from, given its TLS files as read by loadListenerTls. */
export function listenerSetup(l: ListenerConfig, tls: ListenerTls, hostname: string, logger: Logger): ListenerSetup {
  return {
    name: l.name,
    options: listenerOptions(l, tls, hostname, logger),
    greetingDelayMs: greetingDelay(l),
    maxConnectionsPerIp: l.limits.maxConnectionsPerIp,
    ipv6PrefixLength: l.limits.ipv6PrefixLength,
    tlsHandshakeTimeoutMs: l.limits.tlsHandshakeTimeoutMs,
    trust: new TrustedIssuers(tls.ca ?? [], tls.crl ?? []),
    proxy: l.proxyProtocol ? { trusted: new TrustedProxies(l.proxyProtocol.trusted), headerTimeoutMs: l.proxyProtocol.headerTimeoutMs } : null,
    certificateNotAfter: tls.cert ? Date.parse(new X509Certificate(tls.cert).validTo) / 1000 : null,
  };
}

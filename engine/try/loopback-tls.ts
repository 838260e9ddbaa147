/**
 * The chain verdict of a client certificate as a listener would give it: a real TLS handshake on
 * 127.0.0.1 between a server with the listener's own TLS options (key, certificate, CA, CRL, requestCert,
 * minVersion) and a client presenting the certificate. OpenSSL decides, as it does for the live listener,
 * so revoked, expired and foreign certificates get exactly the live verdict. The server end of the
 * handshake is what the session policy reads (getPeerX509Certificate, authorized, authorizationError).
 */
import tls, { type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { X509Certificate } from 'node:crypto';
import type { SMTPServerOptions } from 'smtp-server';
import { offlineVerdict } from './offline-verdict.ts';

/** The TLS options of a listener's server (listener-options.ts) that decide a handshake. */
const HANDSHAKE_OPTIONS = ['key', 'cert', 'ca', 'crl', 'requestCert', 'minVersion', 'secureOptions', 'ciphers', 'honorCipherOrder'] as const;

export interface ClientCredentials {
  /** PEM: the certificate, then any chain certificates sent along. */
  cert: string;
  /**
   * PEM private key of the certificate, to prove it in the handshake. Without it the handshake is made
   * without a client certificate and the verdict comes from `openssl verify` (offline-verdict.ts).
   */
  key: string | null;
}

export interface LoopbackHandshake {
  /** The server's end: what the listener's session sees. */
  server: TLSSocket;
  close(): void;
}

export async function loopbackHandshake(options: SMTPServerOptions, servername: string, client: ClientCredentials | null): Promise<LoopbackHandshake> {
  const own: tls.TlsOptions = { rejectUnauthorized: false };
  for (const k of HANDSHAKE_OPTIONS) if ((options as Record<string, unknown>)[k] !== undefined) (own as Record<string, unknown>)[k] = (options as Record<string, unknown>)[k];
  const server = tls.createServer(own);
  const accepted = new Promise<TLSSocket>((resolve, reject) => {
    server.once('secureConnection', resolve);
    server.once('tlsClientError', reject);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const socket = tls.connect({
    port: (server.address() as AddressInfo).port, host: '127.0.0.1', rejectUnauthorized: false,
    ...(servername && !/^[\d.:[\]]+$/.test(servername) ? { servername } : {}),
    ...(client?.key ? { cert: client.cert, key: client.key } : {}),
  });
  socket.on('error', () => { /* the server's end reports what matters */ });
  try {
    const end = await accepted;
    end.on('error', () => undefined);
    if (client && !client.key) await presentOffline(end, client.cert, options);
    return { server: end, close() { socket.destroy(); end.destroy(); server.close(); } };
  } catch (err) {
    socket.destroy();
    server.close();
    throw new Error(`TLS handshake with the listener's settings failed: ${(err as Error).message}`);
  }
}

/**
 * Make the server's end of a handshake made without a client certificate read as if `chain` had been
 * presented: its certificate, and the verdict `openssl verify` gives with the listener's CAs and CRLs.
 */
async function presentOffline(end: TLSSocket, chain: string, options: SMTPServerOptions): Promise<void> {
  const pems = (list: unknown): string[] => (Array.isArray(list) ? list : list === undefined ? [] : [list]).map((x) => String(x));
  const leaf = new X509Certificate(chain);
  const verdict = options.requestCert ? await offlineVerdict(chain, pems(options.ca), pems(options.crl)) : { authorized: false, authorizationError: null };
  Object.defineProperty(end, 'getPeerX509Certificate', { value: () => (options.requestCert ? leaf : undefined) });
  end.authorized = verdict.authorized;
  (end as { authorizationError: unknown }).authorizationError = verdict.authorizationError;
}

/**
 * The chain of a TLS server's peer as Node shows it: the client's certificate, then the issuers Node finds for
 * it in the store of the handshake's context (the listener's caFiles). Node gives a server no other certificate
 * the client sent, so an intermediate only the client sent ends this chain early (OpenSSL did use it to verify).
 */
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';

/** A certificate Node describes (getPeerCertificate(true)), with the issuer it found for it. */
export type ChainCertificate = DetailedPeerCertificate;

/** A root: Node links it to itself as its own issuer. */
export const isRoot = (c: ChainCertificate): boolean => c.issuerCertificate === c || c.issuerCertificate?.fingerprint256 === c.fingerprint256;

/**
 * The peer's certificate, then each issuer Node found for it in the store of the handshake's context, up to a
 * root (its own issuer) or the first certificate whose issuer is not there (100 at most, OpenSSL's depth).
 */
export function storeChain(socket: TLSSocket): ChainCertificate[] {
  let cert = socket.getPeerCertificate(true);
  if (!cert?.raw) return [];
  const chain = [cert];
  for (let depth = 0; depth < 100 && cert.issuerCertificate?.raw && !isRoot(cert); depth++) {
    cert = cert.issuerCertificate;
    chain.push(cert);
  }
  return chain;
}

/** A CA above the leaf in a handshake's chain: what a CRL names it by. */
export interface ChainIssuer {
  /** As Node prints it (upper-case hex). */
  serial: string;
  der: Buffer;
}

/** The CAs above the peer's certificate in the chain Node shows (storeChain): those of the handshake's caFiles. */
export function chainIssuers(socket: TLSSocket): ChainIssuer[] {
  return storeChain(socket).slice(1).map((c) => ({ serial: c.serialNumber, der: c.raw }));
}

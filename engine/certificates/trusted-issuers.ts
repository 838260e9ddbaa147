/**
 * A listener's CA certificates and CRLs as loaded, for what OpenSSL's handshake verdict does not answer:
 * explaining a verdict OpenSSL reports only as "unable to get CRL" (with a CRL configured, OpenSSL asks for
 * the CRL before it gives up on a foreign or self-signed certificate), and whether a certificate that
 * verified when its session began has been revoked since (a reloaded CRL; checked at each MAIL FROM).
 */
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { x509 } from './x509-provider.ts';
import { pemToDer } from './digests.ts';
import { children, readTlv } from './der.ts';
import { issuerNameDer, subjectNameDer } from './x509-fields.ts';
import { chainIssuers, isRoot, storeChain, type ChainIssuer } from './peer-chain.ts';

export class TrustedIssuers {
  readonly #cas: X509Certificate[];
  /** Revoked serial (lowercase hex, no leading zero bytes) → the CRLs listing it. */
  readonly #revoked = new Map<string, RevokingCrl[]>();

  constructor(caPems: readonly string[], crlPems: readonly string[] = []) {
    this.#cas = caPems.map((pem) => new X509Certificate(pem));
    const subjects = this.#cas.map((ca) => ({ ca, name: subjectNameDer(ca.raw) }));
    for (const pem of crlPems) {
      const der = pemToDer(pem);
      const crl = new x509.X509Crl(der);
      const issuer = crlIssuerDer(der);
      const listing: RevokingCrl = { issuer, cas: subjects.filter((s) => s.name.equals(issuer)).map((s) => s.ca) };
      for (const e of crl.entries) {
        const serial = serialKey(e.serialNumber);
        this.#revoked.set(serial, [...this.#revoked.get(serial) ?? [], listing]);
      }
    }
  }

  /**
   * Is this certificate (its lowercase-hex serial and PEM) listed by one of the CRLs? A Map lookup by
   * serial; only a hit reads the certificate's issuer name (DER, as written), to match the CRL's, and only
   * when the bytes differ OpenSSL parses the certificate (ms for one of 80 KB): asked of certificates that
   * verified or name an account (certificateIdentity), but a pinned one may be of the client's own making.
   */
  isRevoked(cert: { serial: string; pem: string }): boolean {
    if (this.#revoked.size === 0) return false; // no CRL, or none lists anything: nothing to normalise
    return this.#listed(cert.serial, () => pemToDer(cert.pem));
  }

  /**
   * Is a CA above the leaf in the chain of `socket`'s handshake listed by one of these CRLs? A CRL reloaded since
   * the handshake that revokes an intermediate withdraws what it issued, as new handshakes find (CERT_REVOKED).
   * Only the CAs Node shows a server (those of caFiles, peer-chain.ts): an intermediate only the client sent is
   * not seen here.
   */
  revokesIssuerOf(socket: TLSSocket): boolean {
    return this.#revoked.size > 0 && this.revokesAnyOf(chainIssuers(socket));
  }

  /** Is one of these CAs (chainIssuers() of a handshake, kept by a session that outlives it) listed by these CRLs? */
  revokesAnyOf(issuers: readonly ChainIssuer[]): boolean {
    return this.#revoked.size > 0 && issuers.some((ca) => this.#listed(ca.serial, () => ca.der));
  }

  /** A Map lookup by serial; only a hit reads the certificate's issuer name, to match the CRL's. */
  #listed(serial: string, read: () => Buffer): boolean {
    const crls = this.#revoked.get(serialKey(serial));
    if (!crls) return false;
    let der: Buffer;
    let issuer: Buffer;
    try {
      der = read();
      issuer = issuerNameDer(der);
    } catch {
      return false; // not a certificate this reader can walk: described already, so never seen here
    }
    if (crls.some((c) => c.issuer.equals(issuer))) return true;
    // The same name written another way (a CA certificate renewed by another tool: UTF8String for
    // PrintableString, other case or spacing) is the same issuer to OpenSSL, which compares names canonically
    // and revokes the certificate at each new handshake: compared as OpenSSL does, with the CRL's CA.
    const cas = crls.flatMap((c) => c.cas);
    if (!cas.length) return false;
    try {
      const cert = new X509Certificate(der);
      return cas.some((ca) => cert.checkIssued(ca));
    } catch {
      return false;
    }
  }

  /**
   * The SHA-256 fingerprint (as Node prints it) of the CA of these that the chain of `socket`'s handshake ends
   * in, or null when it cannot be told. Node gives a server no certificate the client sent but its own, so the
   * chain is the one Node completes from the store of the handshake's context: an intermediate only the client
   * sent breaks it (null).
   */
  anchorOf(socket: TLSSocket): string | null {
    const root = storeChain(socket).at(-1);
    return root && isRoot(root) ? this.#cas.find((ca) => ca.raw.equals(root.raw))?.fingerprint256 ?? null : null;
  }

  /**
   * Whether these CAs hold the root the chain of `socket`'s handshake ends in (see anchorOf), true when that
   * cannot be told. For a verdict whose CA list is not known: a handshake made before a reload and read after it.
   */
  holdRootOf(socket: TLSSocket): boolean {
    const root = storeChain(socket).at(-1);
    return !root || !isRoot(root) || this.#cas.some((ca) => ca.raw.equals(root.raw));
  }

  /**
   * Does this CA list still trust a chain verified against `older` that ended in `anchor` (anchorOf)? Yes when
   * no CA of `older` is gone from it (whatever the chain), or when its anchor is still here. A CA taken out of
   * caFiles withdraws what it verified, as a CRL does; a chain that cannot be told is withdrawn with any CA.
   */
  stillTrusts(older: TrustedIssuers, anchor: string | null): boolean {
    if (older === this || older.#cas.every((ca) => this.#cas.some((kept) => kept.raw.equals(ca.raw)))) return true;
    return anchor !== null && this.#cas.some((ca) => ca.fingerprint256 === anchor);
  }

  /** The code to report for a certificate whose CRL check failed (authorizationError UNABLE_TO_GET_CRL). */
  explainMissingCrl(der: Uint8Array): string {
    const leaf = new X509Certificate(der);
    // A configured CA really signed it: the CRL of that CA is what is missing.
    if (this.#cas.some((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey))) return 'UNABLE_TO_GET_CRL';
    // By name and signature: checkIssued(leaf) would demand keyCertSign, which a self-signed leaf lacks.
    if (leaf.subject === leaf.issuer && leaf.verify(leaf.publicKey)) return 'DEPTH_ZERO_SELF_SIGNED_CERT';
    return this.#cas.some((ca) => leaf.checkIssued(ca)) ? 'CERT_SIGNATURE_FAILURE' : 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY';
  }
}

/** A CRL: its issuer Name's DER as written, and the configured CAs whose subject is written the same way. */
interface RevokingCrl {
  issuer: Buffer;
  cas: X509Certificate[];
}

/** The DER of a CRL's issuer Name as written: TBSCertList ::= SEQUENCE { version OPTIONAL, signature, issuer, … }. */
function crlIssuerDer(der: Buffer): Buffer {
  const tbs = children(der, readTlv(der, 0, der.length))[0]!;
  let fields = children(der, tbs);
  if (fields[0]?.tag === 0x02) fields = fields.slice(1); // version INTEGER
  const issuer = fields[1]!;
  return Buffer.from(der.subarray(issuer.start, issuer.end));
}

const serialKey = (hex: string): string => hex.toLowerCase().replace(/^(00)+(?=.)/, '');

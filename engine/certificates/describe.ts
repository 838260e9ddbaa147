/**
 * Turns a peer certificate (DER) plus the handshake's chain verdict into the plain PeerCertificate data
 * scripts see. Parsing is cached by DER digest: the same device reconnecting costs one hash.
 */
import { X509Certificate, createHash } from 'node:crypto';
import type { ChainFailureReason, CertificateSummary, DistinguishedName, PeerCertificate } from '../sandbox/api/index.ts';
import { x509 } from './x509-provider.ts';
import { colonHex, hex } from './digests.ts';

type Parsed = Omit<PeerCertificate, 'verified' | 'verifyError' | 'verifyErrorCode'>;

const CACHE_SIZE = 1000;
const cache = new Map<string, Parsed>();

const SHORT_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN', '2.5.4.10': 'O', '2.5.4.11': 'OU', '2.5.4.6': 'C', '2.5.4.8': 'ST', '2.5.4.7': 'L',
  '1.2.840.113549.1.9.1': 'emailAddress', '2.5.4.5': 'serialNumber', '0.9.2342.19200300.100.1.25': 'DC',
  '0.9.2342.19200300.100.1.1': 'UID', '2.5.4.45': 'x500UniqueIdentifier', '2.5.4.4': 'SN', '2.5.4.42': 'GN',
  '2.5.4.12': 'title', '2.5.4.9': 'street', '2.5.4.17': 'postalCode',
};

export interface ChainVerdict {
  verified: boolean;
  /** Node/OpenSSL authorizationError code, e.g. CERT_HAS_EXPIRED; null when verified. */
  errorCode: string | null;
}

export function describeCertificate(der: Uint8Array, verdict: ChainVerdict): PeerCertificate {
  const key = createHash('sha256').update(der).digest('base64');
  let parsed = cache.get(key);
  if (parsed) {
    cache.delete(key); // LRU: move to the end
    cache.set(key, parsed);
  } else {
    parsed = parse(der);
    cache.set(key, parsed);
    if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value!);
  }
  return {
    ...structuredClone(parsed),
    verified: verdict.verified,
    verifyError: verdict.verified ? null : chainFailureReason(verdict.errorCode),
    verifyErrorCode: verdict.verified ? null : verdict.errorCode ?? 'UNKNOWN',
  };
}

function parse(der: Uint8Array): Parsed {
  const node = new X509Certificate(der);
  const cert = new x509.X509Certificate(der);
  const spki = node.publicKey.export({ type: 'spki', format: 'der' });
  const spkiDigest = createHash('sha256').update(spki).digest();
  const sha256 = hex('sha256', der);
  const sha1 = hex('sha1', der);
  const md5 = hex('md5', der);
  const details = node.publicKey.asymmetricKeyDetails ?? {};
  const keyType = node.publicKey.asymmetricKeyType ?? 'unknown';
  return {
    subject: distinguishedName(cert.subjectName),
    issuer: distinguishedName(cert.issuerName),
    san: subjectAltNames(cert),
    serial: cert.serialNumber.toLowerCase(),
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    keyType: keyType === 'rsa-pss' ? 'rsa' : keyType,
    keyBits: details.modulusLength ?? curveBits(details.namedCurve) ?? (keyType === 'ed25519' ? 256 : keyType === 'ed448' ? 456 : 0),
    fingerprint: { sha1, sha256, md5, sha1Colon: colonHex(sha1), sha256Colon: colonHex(sha256), md5Colon: colonHex(md5) },
    pin: {
      sha256: spkiDigest.toString('hex'),
      sha256Colon: colonHex(spkiDigest.toString('hex')),
      sha256Base64: spkiDigest.toString('base64'),
      sha256Base64Url: spkiDigest.toString('base64url'),
    },
    pem: node.toString(),
  };
}

function curveBits(curve: string | undefined): number | undefined {
  return curve ? ({ prime256v1: 256, secp384r1: 384, secp521r1: 521, 'P-256': 256, 'P-384': 384, 'P-521': 521 } as Record<string, number>)[curve] : undefined;
}

function distinguishedName(name: x509.Name): DistinguishedName {
  const attributes: Array<[string, string]> = [];
  for (const rdn of name.toJSON()) {
    for (const [type, values] of Object.entries(rdn)) {
      // @peculiar/x509 names known attributes (CN, O, E…) and leaves the rest as dotted OIDs.
      const short = type === 'E' ? 'emailAddress' : SHORT_NAMES[type] ?? type;
      for (const v of values) attributes.push([short, v]);
    }
  }
  const out: DistinguishedName = { dn: rfc4514(attributes), attributes };
  const named = out as unknown as Record<string, string>;
  for (const [k, v] of attributes) {
    if (['CN', 'O', 'OU', 'C', 'ST', 'L', 'emailAddress'].includes(k) && !(k in named)) named[k] = v;
  }
  return out;
}

/** RFC 4514 string, most specific RDN first, values escaped. */
function rfc4514(attributes: Array<[string, string]>): string {
  const escape = (v: string): string => v.replace(/([,+"\\<>;=])/g, '\\$1').replace(/^([ #])/, '\\$1').replace(/ $/, '\\ ');
  return attributes.map(([k, v]) => `${k}=${escape(v)}`).reverse().join(',');
}

function subjectAltNames(cert: x509.X509Certificate): PeerCertificate['san'] {
  const san = { email: [] as string[], dns: [] as string[], ip: [] as string[], uri: [] as string[] };
  const ext = cert.getExtension(x509.SubjectAlternativeNameExtension);
  if (!ext) return san;
  for (const n of ext.names.items) {
    if (n.type === 'email') san.email.push(n.value);
    else if (n.type === 'dns') san.dns.push(n.value);
    else if (n.type === 'ip') san.ip.push(n.value);
    else if (n.type === 'url') san.uri.push(n.value);
  }
  return san;
}

/** OpenSSL/Node authorizationError code → the reason scripts see. */
export function chainFailureReason(code: string | null): ChainFailureReason | null {
  switch (code) {
    case null: return null;
    case 'CERT_HAS_EXPIRED': return 'expired';
    case 'CERT_NOT_YET_VALID': return 'not-yet-valid';
    case 'CERT_REVOKED': return 'revoked';
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN': return 'self-signed';
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE': return 'unknown-issuer';
    case 'CERT_SIGNATURE_FAILURE': return 'bad-signature';
    case 'UNABLE_TO_GET_CRL': return 'crl-missing';
    case 'NO_CA_CONFIGURED': return 'no-ca-configured';
    default: return 'invalid';
  }
}

/** What the queue keeps about the submitting client's certificate. */
export function summarizeCertificate(pc: PeerCertificate): CertificateSummary {
  return {
    subject: pc.subject.dn, issuer: pc.issuer.dn, fingerprintSha256: pc.fingerprint.sha256, pinSha256: pc.pin.sha256,
    verified: pc.verified, verifyError: pc.verifyError,
  };
}

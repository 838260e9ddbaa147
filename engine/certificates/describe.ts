/**
 * Turns a peer certificate (DER) plus the handshake's chain verdict into the PeerCertificate scripts see.
 * Runs once per TLS connection: parsing (x509-fields.ts) is cached by the DER's SHA-256, so a reconnecting
 * device costs one hash. The certificate was already parsed and checked by OpenSSL in the handshake.
 */
import { createHash, hash } from 'node:crypto';
import type { CertificateSummary, ChainFailureReason, DistinguishedName, PeerCertificate } from '../sandbox/api/index.ts';
import { colonHex, hex, toPem } from './digests.ts';
import { readCertificate, type NameAttribute } from './x509-fields.ts';
import { DRAWS_NOTHING } from '../text/draws-nothing.ts';

/** The chain verdict OpenSSL gave during the handshake (tlsSocket.authorized / authorizationError). */
export interface ChainVerdict {
  verified: boolean;
  /** Node/OpenSSL authorizationError code, e.g. CERT_HAS_EXPIRED; null when verified. */
  errorCode: string | null;
}

type Parsed = Omit<PeerCertificate, 'verified' | 'verifyError' | 'verifyErrorCode'>;

const CACHE_SIZE = 1000;
/**
 * The cache holds at most this many bytes of DER, and no certificate larger than CACHE_ENTRY_MAX: a described
 * certificate takes about six times its DER on the heap (names as strings and as attributes, the PEM), so 1000
 * self-made certificates of 100 KB (OpenSSL takes a list up to 100 KB) held 600 MB for good. A device's is 1-2 KB.
 */
const CACHE_BYTES = 2 * 1024 * 1024;
const CACHE_ENTRY_MAX = 16 * 1024;
/** Insertion-ordered Map as an LRU: a hit is moved to the end, the first key is the oldest. */
const cache = new Map<string, { parsed: Parsed; bytes: number }>();
let cachedBytes = 0;

/** What the cache of described certificates holds now (tests). */
export function describedCertificatesCached(): { entries: number; bytes: number } {
  return { entries: cache.size, bytes: cachedBytes };
}

export function describeCertificate(der: Buffer | Uint8Array, verdict: ChainVerdict): PeerCertificate {
  // One-shot hash: a Hash object per connection cost three times as much.
  const sha256 = hash('sha256', der, 'hex');
  const hit = cache.get(sha256);
  let parsed: Parsed;
  if (hit) {
    parsed = hit.parsed;
    cache.delete(sha256);
    cache.set(sha256, hit);
  } else {
    parsed = deepFreeze(parse(der, sha256));
    if (der.byteLength <= CACHE_ENTRY_MAX) {
      while (cache.size && (cache.size >= CACHE_SIZE || cachedBytes + der.byteLength > CACHE_BYTES)) {
        const [oldest, entry] = cache.entries().next().value!;
        cache.delete(oldest);
        cachedBytes -= entry.bytes;
      }
      cache.set(sha256, { parsed, bytes: der.byteLength });
      cachedBytes += der.byteLength;
    }
  }
  // The parsed part is frozen and shared between connections; only the verdict is per connection.
  return {
    ...parsed,
    verified: verdict.verified,
    verifyError: verdict.verified ? null : chainFailureReason(verdict.errorCode) ?? 'invalid',
    verifyErrorCode: verdict.verified ? null : verdict.errorCode ?? 'UNKNOWN',
  };
}

/**
 * describeCertificate for a peer's certificate, or null when a field cannot be read (a time that is no
 * UTCTime, a subjectAltName that is no SEQUENCE): OpenSSL completes a handshake with such a certificate,
 * and it gives its verdict on it, but nothing can be derived from it here. The caller treats it as no
 * certificate (it grants nothing) and logs `unreadable.reason`.
 */
export function describePeerCertificate(der: Buffer | Uint8Array, verdict: ChainVerdict): PeerCertificate | { unreadable: string } {
  try {
    return describeCertificate(der, verdict);
  } catch (err) {
    return { unreadable: (err as Error).message };
  }
}

function parse(der: Uint8Array, sha256: string): Parsed {
  const fields = readCertificate(der);
  // The SPKI bytes as in the certificate, as mox hashes them (Node's peerCertificate.pubkey is only
  // the EC point). Tests check them against publicKey.export({type:'spki'}) and the openssl pipeline.
  const spkiDigest = createHash('sha256').update(fields.spki).digest();
  const sha1 = hex('sha1', der);
  const md5 = hex('md5', der);
  const pinHex = spkiDigest.toString('hex');
  // Postfix's pkey_fingerprint in its other digests (tables of a main.cf below compatibility_level 3.6: md5).
  const pinSha1 = hex('sha1', fields.spki);
  const pinMd5 = hex('md5', fields.spki);
  return {
    subject: distinguishedName(fields.subject),
    issuer: distinguishedName(fields.issuer),
    san: fields.san,
    serial: fields.serial,
    notBefore: fields.notBefore.toISOString(),
    notAfter: fields.notAfter.toISOString(),
    keyType: fields.keyType,
    keyBits: fields.keyBits,
    fingerprint: { sha1, sha256, md5, sha1Colon: colonHex(sha1), sha256Colon: colonHex(sha256), md5Colon: colonHex(md5) },
    pin: {
      sha256: pinHex,
      sha256Colon: colonHex(pinHex),
      sha256Base64: spkiDigest.toString('base64'),
      sha256Base64Url: spkiDigest.toString('base64url'),
      sha1: pinSha1, sha1Colon: colonHex(pinSha1), md5: pinMd5, md5Colon: colonHex(pinMd5),
    },
    pem: toPem(der, 'CERTIFICATE'),
  };
}

const NAMED_FIELDS = new Set(['CN', 'O', 'OU', 'C', 'ST', 'L', 'emailAddress']);

function distinguishedName(rdns: NameAttribute[][]): DistinguishedName {
  const attributes = rdns.flat().map((a): [string, string] => [a.type, a.value]);
  const out: DistinguishedName = { dn: rfc4514(rdns), attributes };
  const fields = out as unknown as Record<string, string>;
  // The first in DER order, as OpenSSL's X509_NAME_get_text_by_NID (Postfix, Dovecot) would pick.
  for (const [k, v] of attributes) if (NAMED_FIELDS.has(k) && !(k in fields)) fields[k] = v;
  return out;
}

/**
 * RFC 4514, printed as `openssl x509 -nameopt RFC2253,-esc_msb` does (what administrators compare
 * against): attributes in reverse DER order, `+` between the members of a multi-valued RDN.
 */
function rfc4514(rdns: NameAttribute[][]): string {
  const escape = (v: string): string => v
    .replace(/[\\"+,;<>]/g, '\\$&')
    .replace(/[\x00-\x1f\x7f]/g, (c) => '\\' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'))
    .replace(/^[ #]/, '\\$&').replace(/ $/, '\\ ');
  const flat = rdns.flatMap((rdn, index) => rdn.map((a) => ({ ...a, index })));
  let out = '';
  for (let i = flat.length - 1; i >= 0; i--) {
    const a = flat[i]!;
    if (i < flat.length - 1) out += flat[i + 1]!.index === a.index ? '+' : ',';
    out += `${a.type}=${a.hex ? a.value : escape(a.value)}`;
  }
  return out;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/** Node/OpenSSL authorizationError code → the reason scripts see. */
export function chainFailureReason(errorCode: string | null): ChainFailureReason | null {
  switch (errorCode) {
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
    // Not OpenSSL's: what the listener reports when it has no CA bundle to verify against.
    case 'NO_CA_CONFIGURED': return 'no-ca-configured';
    default: return 'invalid';
  }
}

/**
 * A certificate name for a log line or a sighting record: at most DN_MAX characters, then "...". A client's
 * certificate may carry a subject of tens of kilobytes (OpenSSL takes a certificate list up to 100 KB); logged
 * on every connection, or kept for each of 20,000 certificates seen, it would cost that much each time.
 * And nothing a reader's terminal acts on or shows other than it is: the DN escapes C0 controls already; C1
 * controls (U+009B is a terminal's CSI), format characters (a bidi override shows `al\u202Eecila` as
 * "alalice"; zero-width characters), line separators and the other characters that draw nothing (DRAWS_NOTHING:
 * `c\u3164eo`) are written as RFC 4514 escapes of their UTF-8 bytes.
 * Scripts still see the whole name, as it is.
 */
const DN_MAX = 512;
const UNSHOWABLE = new RegExp(String.raw`[\p{Cc}\p{Cf}\p{Cs}\u2028\u2029]|` + DRAWS_NOTHING, 'gu');
export function boundedName(dn: string): string {
  const shown = dn.replace(UNSHOWABLE, (c) => Buffer.from(c).toString('hex').toUpperCase().replace(/../g, '\\$&'));
  return shown.length <= DN_MAX ? shown : `${shown.slice(0, DN_MAX)}...`;
}

/**
 * A name as the queue keeps it: at most DN_MAX characters, then "..." (not escaped: predelivery scripts read
 * it). Kept whole, a subject of tens of KB was copied into every queued message's envelope.
 */
function storedName(dn: string): string {
  if (dn.length <= DN_MAX) return dn;
  const high = dn.charCodeAt(DN_MAX - 1);
  const end = high >= 0xd800 && high <= 0xdbff ? DN_MAX - 1 : DN_MAX; // never half a surrogate pair
  return `${dn.slice(0, end)}...`;
}

/** What the queue keeps about the submitting client's certificate (its names cut at DN_MAX characters). */
export function summarizeCertificate(pc: PeerCertificate): CertificateSummary {
  return {
    subject: storedName(pc.subject.dn), issuer: storedName(pc.issuer.dn), fingerprintSha256: pc.fingerprint.sha256, pinSha256: pc.pin.sha256,
    verified: pc.verified, verifyError: pc.verifyError,
  };
}

/**
 * The client certificate as a Postfix policy request describes it (ccert_subject, ccert_issuer,
 * ccert_fingerprint, ccert_pubkey_fingerprint), and the account it names under a service's
 * `certificateIdentity`. Postfix sends the subject and issuer CN only for a certificate it verified
 * (smtpd_check.c: nothing for an untrusted one), so their presence is the chain verdict. It sends them as
 * xtext (SMTPD_POLICY_README, Postfix 2.2.11 and later: `ccert_issuer=Wietse+20Venema`).
 */
import { isUtf8 } from 'node:buffer';
import type { DistinguishedName, PostfixClientCertificate } from '../sandbox/api/index.ts';
import type { PolicyServiceConfig } from '../config/schema.ts';
import type { LookupTable } from '../policy/lookup-tables.ts';
import { parseSenderList } from '../policy/sender-logins.ts';
import { accountName } from '../policy/certificate-identity.ts';
import { isRevokedDevice, type RevokedDevices } from '../pki/revoked-devices.ts';
import { colonHex, digestOfLength, normalizeFingerprint } from '../certificates/index.ts';

type Digest = PolicyServiceConfig['fingerprintDigest'];

const NO_NAME: DistinguishedName = Object.freeze({ dn: '', attributes: [] }) as DistinguishedName;

/**
 * Postfix's xtext (xtext_quote: `+`, and any byte outside `!`…`~`, as `+HH` of the CN's UTF-8 bytes) as
 * text; null for what Postfix would not write: a `+` without two hex digits, bytes that are not UTF-8.
 */
export function xtextDecode(value: string): string | null {
  if (!value.includes('+')) return value;
  const parts: Buffer[] = [];
  let from = 0;
  for (let plus = value.indexOf('+'); plus >= 0; plus = value.indexOf('+', from)) {
    const hex = value.slice(plus + 1, plus + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null;
    parts.push(Buffer.from(value.slice(from, plus), 'utf8'), Buffer.from(hex, 'hex'));
    from = plus + 3;
  }
  parts.push(Buffer.from(value.slice(from), 'utf8'));
  const bytes = Buffer.concat(parts);
  return isUtf8(bytes) ? bytes.toString('utf8') : null;
}

function commonName(xtext: string): DistinguishedName {
  // Not decodable: no name, as for an unverified certificate (fails closed: no CN identity, not verified).
  const cn = xtextDecode(xtext);
  if (!cn) return NO_NAME;
  // RFC 4514 escaping of the characters that would change the DN's structure.
  const escaped = cn.replace(/([,+"\\<>;=])/g, '\\$1').replace(/^([ #])/, '\\$1').replace(/ $/, '\\ ');
  return { dn: `CN=${escaped}`, CN: cn, attributes: [['CN', cn]] };
}

/** Lowercase hex of a Postfix colon-hex digest of the expected length, or null. */
function digestHex(text: string | undefined, digest: Digest): string | null {
  if (!text) return null;
  const n = normalizeFingerprint(text);
  const bytes = digest === 'sha256' ? 32 : digest === 'sha1' ? 20 : 16;
  return n && n.length === bytes ? n.hex : null;
}

/**
 * Certificates already described, by their four attributes: a device reconnects with the same certificate
 * for every session, and describing it (hex normalisation, colon forms, DNs) was most of what a session's
 * first request allocated. Frozen, since connections share them. Emptied when full: distinct certificates
 * beyond this are rare, and a miss only costs the description again.
 */
const described = new Map<string, PostfixClientCertificate | null>();
const MAX_DESCRIBED = 2000;

export function postfixCertificate(attrs: Record<string, string>, digest: Digest): PostfixClientCertificate | null {
  if (!attrs.ccert_fingerprint && !attrs.ccert_pubkey_fingerprint) return null;
  const key = `${digest}\n${attrs.ccert_fingerprint ?? ''}\n${attrs.ccert_pubkey_fingerprint ?? ''}\n${attrs.ccert_subject ?? ''}\n${attrs.ccert_issuer ?? ''}`;
  let cert = described.get(key);
  if (cert === undefined) {
    if (described.size >= MAX_DESCRIBED) described.clear();
    described.set(key, cert = describe(attrs, digest));
  }
  return cert;
}

/**
 * Why a request's fingerprints describe no certificate, when that is because Postfix computes them with another
 * digest than the service's `fingerprintDigest` (Postfix's default is md5 below compatibility_level 3.6, the
 * service's sha256): the certificate would otherwise vanish without a word, and with it relay and identity.
 * Null when the lengths agree, or nothing was sent.
 */
export function fingerprintDigestMismatch(attrs: Record<string, string>, digest: Digest): string | null {
  for (const name of ['ccert_fingerprint', 'ccert_pubkey_fingerprint'] as const) {
    const n = attrs[name] ? normalizeFingerprint(attrs[name]) : null;
    if (!n) continue;
    const sent = digestOfLength(n.length); // Postfix's smtpd_tls_fingerprint_digest (it also offers sha512)
    if (sent === digest) return null;
    return `${name} is ${sent === 'md5' ? 'an' : 'a'} ${sent} digest, but fingerprintDigest is ${digest}: `
      + `set it to Postfix's smtpd_tls_fingerprint_digest (md5 unless compatibility_level is 3.6 or later)`
      + `${sent === 'sha512' ? ', and use sha256 there (Postern knows md5, sha1 and sha256)' : ''}; until then client certificates are ignored`;
  }
  return null;
}

/**
 * The certificate as revoked, when `pki.dir` revoked it (matched by digest: Postfix sends no serial, and verifies a
 * revoked certificate, CRL or not): not verified, chain verdict `revoked`, so it names no account and relays
 * by no rule, as on a listener.
 */
export function withRevocation(cert: PostfixClientCertificate | null, revoked: RevokedDevices): PostfixClientCertificate | null {
  if (!cert || !isRevokedDevice(revoked, cert.digest, cert.fingerprint[cert.digest], cert.pin[cert.digest])) return cert;
  return Object.freeze({ ...cert, verified: false, verifyError: 'revoked', verifyErrorCode: 'CERT_REVOKED' });
}

function describe(attrs: Record<string, string>, digest: Digest): PostfixClientCertificate | null {
  const fp = digestHex(attrs.ccert_fingerprint, digest);
  const pk = digestHex(attrs.ccert_pubkey_fingerprint, digest);
  if (!fp && !pk) return null;
  const subject = commonName(attrs.ccert_subject ?? '');
  const issuer = commonName(attrs.ccert_issuer ?? '');
  const verified = subject !== NO_NAME || issuer !== NO_NAME;
  const one = (d: Digest) => (d === digest ? fp : null);
  const key = (d: Digest) => (d === digest ? pk : null);
  const colon = (h: string | null) => (h ? colonHex(h) : null);
  const pin = digest === 'sha256' && pk ? Buffer.from(pk, 'hex') : null;
  return deepFreeze<PostfixClientCertificate>({
    subject, issuer, san: null, serial: null, notBefore: null, notAfter: null, keyType: null, keyBits: null,
    fingerprint: {
      sha1: one('sha1'), sha256: one('sha256'), md5: one('md5'),
      sha1Colon: colon(one('sha1')), sha256Colon: colon(one('sha256')), md5Colon: colon(one('md5')),
    },
    pin: {
      sha256: pin ? pk : null, sha256Colon: pin ? colonHex(pk!) : null,
      sha256Base64: pin ? pin.toString('base64') : null, sha256Base64Url: pin ? pin.toString('base64url') : null,
      sha1: key('sha1'), sha1Colon: colon(key('sha1')), md5: key('md5'), md5Colon: colon(key('md5')),
    },
    digest,
    publicKeyFingerprint: pk ? colonHex(pk) : null,
    pem: null,
    verified,
    verifyError: verified ? null : 'invalid',
    verifyErrorCode: verified ? null : 'POSTFIX_NOT_VERIFIED',
  });
}

function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (v !== null && typeof v === 'object' && !Object.isFrozen(v)) deepFreeze(v as object);
  return Object.freeze(o);
}

/**
 * The account the certificate speaks for: a pin (any chain verdict) first, then the CN of a verified one; as a
 * listener's, a verified CN that names another account than the pin wins (anyone may pin a public key).
 */
export function postfixCertificateIdentity(service: PolicyServiceConfig, cert: PostfixClientCertificate | null, pins: LookupTable | undefined): string | null {
  if (!cert || cert.verifyError === 'revoked') return null;
  const [account] = parseSenderList((cert.pin.sha256 && pins?.get(cert.pin.sha256)) || '');
  // As a listener's: no control, format or space characters, nothing that lowercases into another name.
  const named = service.certificateIdentity.field === 'CN' && cert.verified ? accountName(cert.subject.CN) : null;
  return named ?? account ?? null;
}

/** permit_tls_clientcerts: the public-key fingerprint, then the certificate's, is a key of the table. */
export function listedForRelay(cert: PostfixClientCertificate | null, table: LookupTable | undefined): boolean {
  if (!cert || !table || cert.verifyError === 'revoked') return false;
  return [cert.publicKeyFingerprint, cert.fingerprint.sha256 ?? cert.fingerprint.sha1 ?? cert.fingerprint.md5]
    .some((fp) => fp !== null && table.get(fp) !== null);
}

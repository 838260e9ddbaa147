/**
 * What a policy script sees of a TLS peer (client) certificate. Plain data, copied into the
 * sandbox when the hook starts; the private key never exists here.
 */

/** A distinguished name, whole and split into attributes. */
export interface DistinguishedName {
  /** RFC 4514 string, most specific attribute first, e.g. `CN=alice,O=Example`. */
  dn: string;
  /**
   * Common name: the first in DER order, as OpenSSL (Postfix, Dovecot) picks it. A subject may hold several
   * CNs (see `attributes`); which one a CA checked is unknown, so `certificateIdentity` takes none of them then.
   * Likewise for every field here.
   */
  CN?: string;
  /** Organisation. */
  O?: string;
  /** Organisational unit. */
  OU?: string;
  /** Country. */
  C?: string;
  /** State or province. */
  ST?: string;
  /** Locality. */
  L?: string;
  /** PKCS#9 emailAddress attribute (what Dovecot's `ssl_cert_username_field = emailAddress` reads). */
  emailAddress?: string;
  /** Every attribute in order as `[shortName, value]` (multi-valued names appear more than once). */
  attributes: Array<[string, string]>;
}

/** Why a chain did not verify. `null` when it did. */
export type ChainFailureReason =
  | 'expired'
  | 'not-yet-valid'
  | 'revoked'
  | 'self-signed'
  | 'unknown-issuer'
  | 'bad-signature'
  | 'crl-missing'
  | 'no-ca-configured'
  | 'invalid';

/** Fingerprints over the DER certificate: lowercase hex, and Postfix's uppercase colon form. */
export interface Fingerprints {
  sha1: string;
  sha256: string;
  md5: string;
  /** Postfix form, e.g. `5B:57:FE:...` (`openssl x509 -fingerprint`). */
  sha1Colon: string;
  sha256Colon: string;
  md5Colon: string;
}

/**
 * Digests of the DER SubjectPublicKeyInfo: the key identity mox and Postfix pubkey pins use (SHA-256). Postfix
 * computes its `pkey_fingerprint` in its `smtpd_tls_fingerprint_digest`, md5 below compatibility_level 3.6: a
 * `relay_clientcerts` or `check_ccert_access` table of that time holds MD5 public-key fingerprints.
 */
export interface PublicKeyPin {
  /** Lowercase hex. */
  sha256: string;
  /** Postfix `pkey_fingerprint` form: uppercase colon hex. */
  sha256Colon: string;
  /** Standard base64 with padding (HPKP style). */
  sha256Base64: string;
  /** base64url without padding (mox's TLS public key fingerprint). */
  sha256Base64Url: string;
  /** SHA-1 and MD5 of the SubjectPublicKeyInfo, lowercase hex and Postfix's colon form (`smtpd_tls_fingerprint_digest = sha1 / md5`). */
  sha1: string;
  sha1Colon: string;
  md5: string;
  md5Colon: string;
}

export interface PeerCertificate {
  subject: DistinguishedName;
  issuer: DistinguishedName;
  /** Subject alternative names. */
  san: { email: string[]; dns: string[]; ip: string[]; uri: string[] };
  /** Serial number: the INTEGER's magnitude in lowercase hex (`openssl x509 -serial` in upper case), without DER's 00 sign byte. */
  serial: string;
  /** ISO 8601 timestamps. */
  notBefore: string;
  notAfter: string;
  /** Node's `asymmetricKeyType`: `rsa`, `rsa-pss`, `ec`, `ed25519`, `ed448` … */
  keyType: string;
  /** Key size in bits (RSA modulus, EC curve size); 0 when not meaningful. */
  keyBits: number;
  fingerprint: Fingerprints;
  pin: PublicKeyPin;
  /** The certificate in PEM form. */
  pem: string;
  /** True when the chain verified against the listener's CA bundle and CRLs. */
  verified: boolean;
  /** Why it did not verify; `null` when verified. */
  verifyError: ChainFailureReason | null;
  /** The underlying OpenSSL error code, e.g. `CERT_HAS_EXPIRED`; `null` when verified. */
  verifyErrorCode: string | null;
}

/**
 * A client certificate as Postfix describes it to a policy service (`ctx.connection.source` is
 * `postfix-policy`): only what `ccert_subject`, `ccert_issuer`, `ccert_fingerprint` and
 * `ccert_pubkey_fingerprint` carry. Postfix sends the certificate's fingerprints in one digest
 * (`smtpd_tls_fingerprint_digest`, named by the service's `fingerprintDigest`): the others are null, and
 * `pin` is filled only with sha256. Fields Postfix never sends (SANs, dates, serial, key, PEM) are null.
 */
export interface PostfixClientCertificate {
  /** Postfix's subject CN (sent as xtext, decoded here) as `CN=<cn>`; empty (`dn: ''`) when Postfix did not verify the certificate (it sends no subject then). */
  subject: DistinguishedName;
  /** The issuer's CN, likewise. */
  issuer: DistinguishedName;
  san: null;
  serial: null;
  notBefore: null;
  notAfter: null;
  keyType: null;
  keyBits: null;
  fingerprint: { [K in keyof Fingerprints]: string | null };
  pin: { [K in keyof PublicKeyPin]: string | null };
  /** The digest Postfix used. */
  digest: 'sha256' | 'sha1' | 'md5';
  /** `ccert_pubkey_fingerprint` as Postfix sent it (colon hex in `digest`), or null. */
  publicKeyFingerprint: string | null;
  pem: null;
  /** Postfix verified the chain against its own CA files (it sent the subject and issuer). */
  verified: boolean;
  /** `invalid` when Postfix did not verify it (Postfix does not say why); null when verified. */
  verifyError: ChainFailureReason | null;
  /** `POSTFIX_NOT_VERIFIED`, or null when verified. */
  verifyErrorCode: string | null;
}

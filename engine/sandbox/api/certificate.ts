/**
 * What a policy script sees of a TLS peer (client) certificate. Plain data, copied into the
 * sandbox when the hook starts; the private key never exists here. Read-only (frozen, with the connection).
 */

/** A distinguished name, whole and split into attributes. */
export interface DistinguishedName {
  /** RFC 4514 string, most specific attribute first, e.g. `CN=alice,O=Example`. */
  readonly dn: string;
  /**
   * Common name: the first in DER order, as OpenSSL (Postfix, Dovecot) picks it. A subject may hold several
   * CNs (see `attributes`); which one a CA checked is unknown, so `certificateIdentity` takes none of them then.
   * Likewise for every field here.
   */
  readonly CN?: string;
  /** Organisation. */
  readonly O?: string;
  /** Organisational unit. */
  readonly OU?: string;
  /** Country. */
  readonly C?: string;
  /** State or province. */
  readonly ST?: string;
  /** Locality. */
  readonly L?: string;
  /** PKCS#9 emailAddress attribute (what Dovecot's `ssl_cert_username_field = emailAddress` reads). */
  readonly emailAddress?: string;
  /** Every attribute in order as `[shortName, value]` (multi-valued names appear more than once). */
  readonly attributes: ReadonlyArray<readonly [string, string]>;
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
  readonly sha1: string;
  readonly sha256: string;
  readonly md5: string;
  /** Postfix form, e.g. `5B:57:FE:...` (`openssl x509 -fingerprint`). */
  readonly sha1Colon: string;
  readonly sha256Colon: string;
  readonly md5Colon: string;
}

/**
 * Digests of the DER SubjectPublicKeyInfo: the key identity mox and Postfix pubkey pins use (SHA-256). Postfix
 * computes its `pkey_fingerprint` in its `smtpd_tls_fingerprint_digest`, md5 below compatibility_level 3.6: a
 * `relay_clientcerts` or `check_ccert_access` table of that time holds MD5 public-key fingerprints.
 */
export interface PublicKeyPin {
  /** Lowercase hex. */
  readonly sha256: string;
  /** Postfix `pkey_fingerprint` form: uppercase colon hex. */
  readonly sha256Colon: string;
  /** Standard base64 with padding (HPKP style). */
  readonly sha256Base64: string;
  /** base64url without padding (mox's TLS public key fingerprint). */
  readonly sha256Base64Url: string;
  /** SHA-1 and MD5 of the SubjectPublicKeyInfo, lowercase hex and Postfix's colon form (`smtpd_tls_fingerprint_digest = sha1 / md5`). */
  readonly sha1: string;
  readonly sha1Colon: string;
  readonly md5: string;
  readonly md5Colon: string;
}

export interface PeerCertificate {
  readonly subject: DistinguishedName;
  readonly issuer: DistinguishedName;
  /** Subject alternative names. */
  readonly san: { readonly email: readonly string[]; readonly dns: readonly string[]; readonly ip: readonly string[]; readonly uri: readonly string[] };
  /** Serial number: the INTEGER's magnitude in lowercase hex (`openssl x509 -serial` in upper case), without DER's 00 sign byte. */
  readonly serial: string;
  /** ISO 8601 timestamps. */
  readonly notBefore: string;
  readonly notAfter: string;
  /** Node's `asymmetricKeyType`: `rsa`, `rsa-pss`, `ec`, `ed25519`, `ed448` … */
  readonly keyType: string;
  /** Key size in bits (RSA modulus, EC curve size); 0 when not meaningful. */
  readonly keyBits: number;
  readonly fingerprint: Fingerprints;
  readonly pin: PublicKeyPin;
  /** The certificate in PEM form. */
  readonly pem: string;
  /** True when the chain verified against the listener's CA bundle and CRLs. */
  readonly verified: boolean;
  /** Why it did not verify; `null` when verified. */
  readonly verifyError: ChainFailureReason | null;
  /** The underlying OpenSSL error code, e.g. `CERT_HAS_EXPIRED`; `null` when verified. */
  readonly verifyErrorCode: string | null;
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
  readonly subject: DistinguishedName;
  /** The issuer's CN, likewise. */
  readonly issuer: DistinguishedName;
  readonly san: null;
  readonly serial: null;
  readonly notBefore: null;
  readonly notAfter: null;
  readonly keyType: null;
  readonly keyBits: null;
  readonly fingerprint: { readonly [K in keyof Fingerprints]: string | null };
  readonly pin: { readonly [K in keyof PublicKeyPin]: string | null };
  /** The digest Postfix used. */
  readonly digest: 'sha256' | 'sha1' | 'md5';
  /** `ccert_pubkey_fingerprint` as Postfix sent it (colon hex in `digest`), or null. */
  readonly publicKeyFingerprint: string | null;
  readonly pem: null;
  /** Postfix verified the chain against its own CA files (it sent the subject and issuer), and `pki.dir` has not revoked it. */
  readonly verified: boolean;
  /** `invalid` when Postfix did not verify it (Postfix does not say why); `revoked` when `pki.dir` revoked it (matched by its fingerprints: Postfix checks no CRL); null when verified. */
  readonly verifyError: ChainFailureReason | null;
  /** `POSTFIX_NOT_VERIFIED`, `CERT_REVOKED`, or null when verified. */
  readonly verifyErrorCode: string | null;
}

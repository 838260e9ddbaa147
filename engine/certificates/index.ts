/** Certificates: describing peer certificates, reading trust material, pins, generating PKI. No SMTP here. */
export { describeCertificate, describePeerCertificate, chainFailureReason, summarizeCertificate, boundedName, type ChainVerdict } from './describe.ts';
export { normalizeFingerprint, normalizePin, matchesPin, digestOfLength } from './pins.ts';
export { strongEnoughKey, explainUnspecified, MIN_RSA_BITS, MIN_EC_BITS } from './key-strength.ts';
export { spkiFacts } from './x509-fields.ts';
export { encryptedKeyProblem } from './key-material.ts';
export { colonHex } from './digests.ts';
export { crlDeadlines, loadKeyPair, loadTrustMaterial, TlsFileError, type TlsFileRole, type TrustMaterial } from './tls-files.ts';
export {
  createCertificateAuthority, issueServerCertificate, issueClientCertificate, createSelfSignedCertificate, createCrl,
  loadAuthority, type Authority, type AuthorityOptions, type CrlOptions, type IssuedCertificate, type KeyType,
  type LeafOptions, type Revocation, type SubjectOptions,
} from './pki.ts';
export { exportPkcs12, pkcs12Bytes, type Pkcs12Encryption } from './pkcs12.ts';
export { writeDevelopmentPki, DEVELOPMENT_P12_PASSWORD, type DevelopmentPki } from './dev-pki.ts';
export { TrustedIssuers } from './trusted-issuers.ts';
export { chainIssuers, type ChainIssuer } from './peer-chain.ts';
export { chainEmailConstraints, emailPermitted, type EmailConstraints } from './name-constraints.ts';

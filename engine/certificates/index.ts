/** Certificates: describing peer certificates, reading trust material, pins, generating PKI. No SMTP here. */
export { describeCertificate, chainFailureReason, summarizeCertificate, type ChainVerdict } from './describe.ts';
export { normalizeFingerprint, normalizePin, matchesPin } from './pins.ts';
export { loadKeyPair, loadTrustMaterial, type TrustMaterial } from './tls-files.ts';
export {
  createCertificateAuthority, issueServerCertificate, issueClientCertificate, createSelfSignedCertificate, createCrl,
  loadAuthority, exportPkcs12, writeDevelopmentPki, type Authority, type IssuedCertificate, type KeyType, type DevelopmentPki,
} from './pki.ts';
export { TrustedIssuers } from './trusted-issuers.ts';

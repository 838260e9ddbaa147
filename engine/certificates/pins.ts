/**
 * Normalising fingerprints and pins as administrators write them: Postfix colon hex (any case), plain
 * hex, standard base64 or base64url (mox) — all to lowercase hex, so one table serves every form.
 */
import type { PeerCertificate } from '../sandbox/api/index.ts';

const DIGEST_BYTES = new Set([16, 20, 32, 48, 64]); // md5, sha1, sha256, sha384, sha512

/** Canonical lowercase hex of a digest written in any accepted form, or null if it is not one. */
export function normalizeFingerprint(text: string): { hex: string; length: number } | null {
  const t = text.trim();
  if (/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2})+$/.test(t) || /^[0-9a-fA-F]+$/.test(t)) {
    const h = t.replace(/:/g, '').toLowerCase();
    return h.length % 2 === 0 && DIGEST_BYTES.has(h.length / 2) ? { hex: h, length: h.length / 2 } : null;
  }
  // base64 / base64url of a 32-byte digest (SPKI pins); 43 chars unpadded or 44 with '='.
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(t)) {
    const bytes = Buffer.from(t.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    return bytes.length === 32 ? { hex: bytes.toString('hex'), length: 32 } : null;
  }
  return null;
}

/** SHA-256 SPKI pin in canonical hex, or null. */
export function normalizePin(text: string): string | null {
  const n = normalizeFingerprint(text);
  return n && n.length === 32 ? n.hex : null;
}

export function matchesPin(cert: PeerCertificate, pinText: string): boolean {
  return normalizePin(pinText) === cert.pin.sha256;
}

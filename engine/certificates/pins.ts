/**
 * Fingerprints and SPKI pins as administrators write them — Postfix colon hex (any case), plain hex,
 * standard base64, base64url (mox) — normalised to lowercase hex, so one table serves every spelling.
 */
import type { PeerCertificate } from '../sandbox/api/index.ts';

/** Digest lengths in bytes that fingerprint tables hold: md5, sha1, sha256, sha384, sha512. */
const DIGEST_OF_LENGTH: ReadonlyMap<number, string> = new Map([[16, 'md5'], [20, 'sha1'], [32, 'sha256'], [48, 'sha384'], [64, 'sha512']]);
const DIGEST_BYTES: ReadonlySet<number> = new Set(DIGEST_OF_LENGTH.keys());

/** The digest a fingerprint of `bytes` bytes is written in (`md5` … `sha512`): to name it in a message. */
export function digestOfLength(bytes: number): string | undefined {
  return DIGEST_OF_LENGTH.get(bytes);
}
const COLON_HEX = /^[0-9a-f]{2}(?::[0-9a-f]{2})+$/i;
const PLAIN_HEX = /^(?:[0-9a-f]{2})+$/i;
/** 32 bytes in base64 are 43 characters plus an optional `=`; either alphabet (`+/` or `-_`), not mixed. */
const BASE64_32 = /^(?:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=?|[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]=?)$/;

/**
 * A digest written in any accepted form as `{hex, length}` (length in bytes, so callers compare it with
 * the right digest: 16 md5, 20 sha1, 32 sha256), or null if the text is none of those forms.
 */
export function normalizeFingerprint(text: string): { hex: string; length: number } | null {
  // curl's --pinnedpubkey form: sha256//<base64>
  const t = text.trim().replace(/^sha256\/\//i, '');
  if (COLON_HEX.test(t) || PLAIN_HEX.test(t)) {
    const h = t.replace(/:/g, '').toLowerCase();
    return DIGEST_BYTES.has(h.length / 2) ? { hex: h, length: h.length / 2 } : null;
  }
  // Base64 only for SHA-256: that is how mox and HPKP-style pins are written. The last character may
  // only carry 2 significant bits, so every accepted string decodes to exactly one digest.
  if (BASE64_32.test(t)) return { hex: Buffer.from(t, t.includes('-') || t.includes('_') ? 'base64url' : 'base64').toString('hex'), length: 32 };
  return null;
}

/** A SHA-256 SPKI pin in any accepted form → canonical lowercase hex, or null. */
export function normalizePin(text: string): string | null {
  const n = normalizeFingerprint(text);
  return n && n.length === 32 ? n.hex : null;
}

/** Does the certificate's public key (SPKI SHA-256) match the pin, however it is written? */
export function matchesPin(pc: PeerCertificate, pinText: string): boolean {
  return normalizePin(pinText) === pc.pin.sha256;
}

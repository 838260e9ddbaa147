/**
 * Keeping secrets out of error messages and logs. A table, users file or configuration pointed by mistake
 * at a private key must not echo the key: a PEM private key is refused by file name alone, and a line
 * quoted in an error shows nothing that looks like key material (long base64 that is not a digest).
 */
import { normalizeFingerprint } from './pins.ts';

/** RSA, EC, ENCRYPTED, OPENSSH … PRIVATE KEY blocks. */
const PRIVATE_KEY_PEM = /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/g;
/** Where a block's key material starts after its BEGIN line: at once, or after RFC 1421 headers (Proc-Type, DEK-Info). */
const KEY_MATERIAL_WITHIN = 300;
/** Runs that may be base64 or base64url key material (a PEM body line is 64 characters). */
const BASE64_RUN = /[A-Za-z0-9+/_-]{32,}={0,2}/g;
const PEM_ARMOUR = /^\s*-----(BEGIN|END) /;

/**
 * Does the text hold a PEM private key block: a BEGIN line followed by key material (in a file, or in a string
 * literal with `\n` escapes)? The BEGIN line alone is no key: a data script that refuses mail carrying one
 * (`body.includes("-----BEGIN PRIVATE KEY-----")`, docs/scripts.md's own example) was refused as a key.
 */
export function containsPrivateKey(text: string): boolean {
  for (const begin of text.matchAll(PRIVATE_KEY_PEM)) {
    const from = begin.index + begin[0].length;
    for (const run of text.slice(from, from + KEY_MATERIAL_WITHIN).matchAll(BASE64_RUN)) if (keyLike(run[0])) return true;
  }
  return false;
}

/** The message for a file that holds a private key: names the file, quotes nothing of it. */
export function privateKeyFileMessage(what: string): string {
  return `holds a PEM private key ("PRIVATE KEY" block), not ${what}: refused, nothing of it shown (is the path right?)`;
}

/** A passphrase-protected PEM private key: PKCS#8 `ENCRYPTED PRIVATE KEY`, or a traditional block with `Proc-Type: 4,ENCRYPTED`. */
const ENCRYPTED_KEY_PEM = /-----BEGIN ENCRYPTED PRIVATE KEY-----|-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\r?\nProc-Type: *4, *ENCRYPTED/;

/**
 * Why a key file that node:crypto cannot read is unusable, when it is encrypted: OpenSSL then reports only
 * "interrupted or cancelled" (no passphrase to ask for), which says nothing to an administrator.
 */
export function encryptedKeyProblem(text: string): string | null {
  if (!ENCRYPTED_KEY_PEM.test(text)) return null;
  return 'the private key is encrypted (passphrase-protected), and Postern takes no passphrase: ' +
    'store it unencrypted, readable by Postern only (`openssl pkey -in <file> -out <new file>`)';
}

/** Base64 text of mixed case and digits, long and not a digest: likely part of a key. */
function keyLike(run: string): boolean {
  return /\d/.test(run) && /[a-z]/.test(run) && /[A-Z]/.test(run) && !normalizeFingerprint(run);
}

/** Does this line of a file look like key material (PEM armour, or a long base64 run that is not a digest)? */
export function looksLikeKeyMaterial(line: string): boolean {
  return PEM_ARMOUR.test(line) || [...line.matchAll(BASE64_RUN)].some((m) => keyLike(m[0]));
}

/** Text with every key-like base64 run replaced by `[…]`: for messages that may carry file content. */
export function hideKeyMaterial(text: string): string {
  return text.replace(BASE64_RUN, (run) => (keyLike(run) ? '[…]' : run));
}

/**
 * A line of a file as an error message may quote it: JSON-quoted and cut at `max` characters, or, when it
 * looks like key material, at most its first token (nothing when that token is key-like itself).
 */
export function quoteLine(line: string, max = 60): string {
  if (!looksLikeKeyMaterial(line)) return JSON.stringify(line.slice(0, max));
  const first = line.trim().split(/\s+/)[0] ?? '';
  const shown = first && !looksLikeKeyMaterial(first.replace(/^-+/, '')) ? `${JSON.stringify(first.slice(0, max))} … ` : '';
  return `${shown}(a line that looks like key material: not shown)`;
}

/** One token of a file (a key, a name) as an error message may quote it. */
export function quoteToken(token: string, max = 60): string {
  return looksLikeKeyMaterial(token) ? '(a value that looks like key material: not shown)' : token.slice(0, max);
}

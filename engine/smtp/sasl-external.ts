/**
 * Parsing of the SASL EXTERNAL response (RFC 4422 appendix A, RFC 4954 §4): `=` or an empty line is the
 * empty authzid; anything else must be strict base64 of a UTF-8 string without NUL or controls (C0 or C1).
 */
import { isSaslBase64 } from './sasl-base64.ts';

export type ExternalResponse = { ok: true; authzid: string } | { ok: false; cancelled: boolean };

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function parseExternalResponse(line: string, continuation: boolean): ExternalResponse {
  const text = line.trim();
  // curl answers a 334 with "=" although RFC 4954 defines it only for the initial response: accept it.
  if (text === '=' || (continuation && text === '')) return { ok: true, authzid: '' };
  if (continuation && text === '*') return { ok: false, cancelled: true };
  if (!isSaslBase64(text)) return { ok: false, cancelled: false };
  let authzid: string;
  try {
    authzid = utf8.decode(Buffer.from(text, 'base64'));
  } catch {
    return { ok: false, cancelled: false };
  }
  // C0 and C1 controls, as smtp-server refuses them in a PLAIN or LOGIN username (SASLprep prohibits both).
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f-\x9f]/.test(authzid)) return { ok: false, cancelled: false };
  return { ok: true, authzid: authzid.normalize('NFC') };
}

/**
 * Parsing of the SASL EXTERNAL response (RFC 4422 appendix A, RFC 4954 §4): `=` or an empty line is the
 * empty authzid; anything else must be strict base64 (else 501 5.5.2) of a UTF-8 string without NUL or controls, C0
 * or C1 (else 501 5.5.4, PLAIN's reply to such a username).
 */
import { isSaslBase64 } from './sasl-base64.ts';

/**
 * Why a response is refused: the client cancelled (`*`), it is not base64, or it is base64 of what no authzid is
 * (not UTF-8, a control character): answered as PLAIN answers such a username, not as bad base64, which it is not.
 */
export type ExternalFailure = 'cancelled' | 'notBase64' | 'malformed';

export type ExternalResponse = { ok: true; authzid: string } | { ok: false; failure: ExternalFailure };

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function parseExternalResponse(line: string, continuation: boolean): ExternalResponse {
  const text = line.trim();
  // curl answers a 334 with "=" although RFC 4954 defines it only for the initial response: accept it.
  if (text === '=' || (continuation && text === '')) return { ok: true, authzid: '' };
  if (continuation && text === '*') return { ok: false, failure: 'cancelled' };
  if (!isSaslBase64(text)) return { ok: false, failure: 'notBase64' };
  let authzid: string;
  try {
    authzid = utf8.decode(Buffer.from(text, 'base64'));
  } catch {
    return { ok: false, failure: 'malformed' };
  }
  // C0 and C1 controls, as smtp-server refuses them in a PLAIN or LOGIN username (SASLprep prohibits both).
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f-\x9f]/.test(authzid)) return { ok: false, failure: 'malformed' };
  return { ok: true, authzid: authzid.normalize('NFC') };
}

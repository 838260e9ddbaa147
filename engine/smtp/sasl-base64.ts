/**
 * Whether a SASL response is base64 as RFC 4954 §4 asks (RFC 4648 alphabet, padded to whole quanta). Node's
 * decoder is lenient: it skips characters outside the alphabet and stops at the first padding, so a line is
 * checked here before it is decoded, and one that is not base64 gets 501 (the RFC's MUST).
 */
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

export function isSaslBase64(text: string): boolean {
  return text.length % 4 === 0 && BASE64.test(text);
}

// RCPT TO, asked by Postfix: relay for a certificate listed by fingerprint, or for a pinned device key.
// Local domains and SASL-authenticated clients get no verdict (DUNNO): Postfix's next restriction decides.
import type { RcptToContext, Verdict } from 'postern';

export default function rcptto(ctx: RcptToContext): Verdict | void {
  if (ctx.builtin.accepted) return;
  const cert = ctx.connection.clientCertificate;
  log(`ccert_fingerprint=${ctx.postfix?.attributes.ccert_fingerprint ?? ''} verified=${cert?.verified ?? false} identity=${ctx.connection.certificateIdentity ?? ''}`);
  if (cert && lookup('relay_certs', cert.fingerprint.sha256) !== null) return accept();
  if (ctx.connection.certificateIdentity) return accept(); // a key in device_pins
  // Postfix puts `<rcpt>: Recipient address rejected:` in front of the text.
  return reject('Relay access denied: client certificate not listed', { code: 554, enhanced: '5.7.1' });
}

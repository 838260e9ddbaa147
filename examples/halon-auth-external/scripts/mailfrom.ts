// MAIL FROM context (Halon): the certificate's fingerprint must map to the sender's domain.
import type { MailFromContext, Verdict } from 'postern';

export default function mailfrom(ctx: MailFromContext): Verdict {
  const cert = ctx.connection.clientCertificate;
  if (cert && lookup('tls_fingerprints', cert.fingerprint.sha1) === ctx.address.domain) return accept();
  return reject(`No valid X.509 client certificate for ${ctx.address.domain}`);
}

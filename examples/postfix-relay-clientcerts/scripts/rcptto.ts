// permit_tls_clientcerts: relay for certificates listed in relay_clientcerts. Like Postfix, the public
// key fingerprint is tried first, then the certificate fingerprint, each in the digests Postfix's
// smtpd_tls_fingerprint_digest may name (md5 below compatibility_level 3.6); the value is only a label.
import type { RcptToContext, Verdict } from 'postern';

export default function rcptto(ctx: RcptToContext): Verdict | void {
  if (ctx.builtin.accepted) return; // local domains, authenticated sessions
  const cert = ctx.connection.clientCertificate;
  if (cert) {
    const listed = [cert.pin.sha256, cert.pin.sha1, cert.pin.md5, cert.fingerprint.sha256, cert.fingerprint.sha1, cert.fingerprint.md5]
      .find((fp) => lookup('relay_clientcerts', fp) !== null);
    if (listed) return accept();
  }
  return reject(`<${ctx.address.address}>: Relay access denied`, { code: 554, enhanced: '5.7.1' });
}

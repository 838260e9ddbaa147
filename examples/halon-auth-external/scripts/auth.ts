// AUTH context (Halon): accept EXTERNAL for a known certificate, username = subject CN (or "X509").
import type { AuthContext, Verdict } from 'postern';

export default function auth(ctx: AuthContext): Verdict | void {
  const cert = ctx.connection.clientCertificate;
  if (ctx.auth.mechanism !== 'EXTERNAL' || !cert) return;
  if (lookup('tls_fingerprints', cert.fingerprint.sha1) !== null) {
    return accept({ username: cert.subject.CN ?? 'X509' });
  }
}

// Default AUTH policy: keep the built-in rule (certificate identity for EXTERNAL, users file for
// passwords) and log what it decided, with the certificate that was presented.
import type { AuthContext, Verdict } from 'postern';

export default function auth(ctx: AuthContext): Verdict | void {
  const cert = ctx.connection.clientCertificate;
  log(`${ctx.auth.mechanism} ${ctx.builtin.accepted ? 'accepted' : 'refused'} (${ctx.builtin.reason})`,
    cert ? `certificate ${cert.subject.dn} verified=${cert.verified}` : 'no certificate');
}

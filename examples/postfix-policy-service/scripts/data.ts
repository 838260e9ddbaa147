// DATA, asked by Postfix (smtpd_data_restrictions): name the certificate a relayed message came with, for
// the mail system behind Postfix. One header `add` is Postfix's `PREPEND`, which Postfix applies only when
// asked before the content (not in smtpd_end_of_data_restrictions); see docs/postfix-policy.md.
import type { DataContext, Verdict } from 'postern';

export default function data(ctx: DataContext): Verdict | void {
  const cert = ctx.connection.clientCertificate;
  const label = (cert && lookup('relay_certs', cert.fingerprint.sha256)) ?? ctx.connection.certificateIdentity;
  if (!label) return; // no listed certificate: no verdict (DUNNO)
  return accept({ headers: [{ op: 'add', name: 'X-Relay-Certificate', value: label }] });
}

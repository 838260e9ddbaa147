// Pre-delivery context (Halon: Try() with the tls_client_cert option): the outbound client certificate is
// chosen by the sender's domain. The script names a certificate declared in postern.yaml; the key is read
// and used by the server and never enters the sandbox.
import type { PredeliveryContext, PredeliveryVerdict } from 'postern';

export default function predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void {
  const sender = ctx.message.sender;
  if (sender === '') return; // a bounce: the configured route with delivery.tls.clientCertificate
  const domain = sender.slice(sender.lastIndexOf('@') + 1).toLowerCase();
  const certificate = lookup('sender_certificates', domain);
  if (certificate === null) {
    // The relay would refuse it anyway. Keep it queued (retried on delivery.retrySchedule, bounced after
    // delivery.maxAgeHours) so that adding the domain to sender_certificates lets it go out.
    return defer(`No client certificate for sender domain ${domain}`, { enhanced: '4.7.0' });
  }
  return deliver({ tls: { clientCertificate: certificate } });
}

/**
 * A listener's own certificate outside its dates. Clients that verify the server (submission clients, MTA-STS and
 * DANE senders) refuse it, so mail stops while the server looks healthy: said by `postern check`, a start and a
 * reload, as delivery's client certificates are (engine/delivery/outbound-tls.ts). Said, not refused: port 25
 * still takes mail from the senders that do not verify, and the unit's ExecStartPre runs `postern check`, which
 * must not turn a certificate that lapsed overnight into no mail at all.
 */
import { X509Certificate } from 'node:crypto';

/** Within this many days of its end a certificate is said to expire soon (certbot renews 30 days before). */
export const SERVER_CERTIFICATE_WARNING_DAYS = 14;

/** `<file>: server certificate "<subject>" …` when the chain's leaf (its first certificate) is expired, expiring or not yet valid. */
export function serverCertificateDates(file: string, chainPem: string, now = new Date()): string | null {
  const leaf = new X509Certificate(chainPem); // the first block, already parsed by loadKeyPair
  const about = `${file}: server certificate "${leaf.subject.replace(/\n/g, ', ')}"`;
  const notAfter = leaf.validToDate;
  const notBefore = leaf.validFromDate;
  const left = notAfter.getTime() - now.getTime();
  if (left < 0) return `${about} expired on ${notAfter.toISOString()}: clients that verify it (submission clients, MTA-STS and DANE senders) refuse to send; renew it`;
  if (notBefore.getTime() > now.getTime()) return `${about} is not valid before ${notBefore.toISOString()}: clients that verify it refuse to send until then (a clock behind, or a certificate issued ahead?)`;
  if (left < SERVER_CERTIFICATE_WARNING_DAYS * 86400_000) {
    const days = Math.floor(left / 86400_000);
    return `${about} expires on ${notAfter.toISOString()} (in ${days === 0 ? 'less than a day' : days === 1 ? '1 day' : `${days} days`}): renew it (the new files are taken at once)`;
  }
  return null;
}

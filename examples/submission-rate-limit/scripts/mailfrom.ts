// Per-certificate hourly limit: each device (its certificate's public key) has its own count, so a
// runaway laptop does not use up its owner's other devices. The limit comes from send_limits, by account.
import type { MailFromContext } from "postern";

const DEFAULT_PER_HOUR = 20;

export default async function (ctx: MailFromContext) {
  const cert = ctx.connection.clientCertificate;
  const account = ctx.connection.certificateIdentity;
  if (!cert || !account) return; // not a certificate login: the built-in rules decide
  const perHour = Number(lookup("send_limits", account) ?? DEFAULT_PER_HOUR);
  // If Redis is unreachable, rate() throws and the MAIL FROM gets 451 4.3.0 (fail closed): clients retry.
  const r = await rate(`cert:${cert.pin.sha256}`, perHour, 3600);
  if (!r.allowed) {
    log(`${account}: certificate ${cert.subject.dn} over ${perHour}/hour`);
    return defer(`Too many messages from this certificate, try again in ${Math.ceil(r.resetSeconds / 60)} min`, { code: 450, enhanced: "4.7.1" });
  }
  // No verdict: the built-in sender binding (senderLogin) decides as usual.
}

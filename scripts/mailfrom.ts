// Default MAIL FROM policy: an authenticated sender may only use its own address (as mox does).
// Unauthenticated sessions (inbound mail) are accepted; RCPT TO's relay rule decides what they may do.
// A listener with senderLogin.enforce has the built-in rule decide instead (its table may allow more).
import type { MailFromContext, Verdict } from 'postern';

export default function mailfrom(ctx: MailFromContext): Verdict | void {
  if (ctx.builtin.reason !== 'not-enforced') return;
  const user = ctx.connection.auth?.username;
  if (!user || ctx.address.address === '') return;
  if (ctx.address.address.toLowerCase() !== user.toLowerCase()) {
    return reject(`<${ctx.address.address}>: sender address not owned by ${user}`, { code: 553, enhanced: '5.7.1' });
  }
}

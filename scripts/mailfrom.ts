// Default MAIL FROM policy: an authenticated sender may only use its own address (as mox does).
// Unauthenticated sessions (inbound mail) are accepted; RCPT TO's relay rule decides what they may do.
// A listener with senderLogin.enforce has the built-in rule decide instead (its table may allow more).
import type { MailFromContext, Verdict } from 'postern';

export default function mailfrom(ctx: MailFromContext): Verdict | void {
  if (ctx.builtin.reason !== 'not-enforced') return;
  const user = ctx.connection.auth?.username;
  if (!user || ctx.address.address === '') return;
  if (asciiLowerCase(ctx.address.address) !== asciiLowerCase(user)) {
    return reject(`<${ctx.address.address}>: sender address not owned by ${user}`, { code: 553, enhanced: '5.7.1' });
  }
}

// Only A-Z: toLowerCase() makes `k` of U+212A KELVIN SIGN, so a login `\u212Aate@…` would own kate@….
function asciiLowerCase(text: string): string {
  return text.replace(/[A-Z]+/g, (s) => s.toLowerCase());
}

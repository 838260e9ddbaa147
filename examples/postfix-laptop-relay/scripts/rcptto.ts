// Mail clients on this laptop may relay, nobody else (Postfix mynetworks_style = host + permit_mynetworks).
import type { RcptToContext, Verdict } from 'postern';

const LOCAL = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

export default function rcptto(ctx: RcptToContext): Verdict | void {
  if (LOCAL.has(ctx.connection.remoteAddress)) return accept();
  // otherwise the built-in rule: 554 5.7.1 Relay access denied
}

/**
 * The script-facing API: source of truth for scripts/postern.d.ts. Types only; nothing here runs.
 */
import type {
  AuthContext, ConnectContext, DataContext, HeloContext, MailFromContext, PredeliveryContext, RcptToContext,
} from './contexts.ts';
import type { PredeliveryVerdict, Verdict } from './verdicts.ts';

export type * from './certificate.ts';
export type * from './session.ts';
export type * from './verdicts.ts';
export type * from './contexts.ts';
export type * from './helpers.ts';

/** Hook name → the signature of the default export of the script file of that name. */
export interface PolicyHooks {
  connect(ctx: ConnectContext): Verdict | void;
  helo(ctx: HeloContext): Verdict | void;
  auth(ctx: AuthContext): Verdict | void;
  mailfrom(ctx: MailFromContext): Verdict | void;
  rcptto(ctx: RcptToContext): Verdict | void;
  data(ctx: DataContext): Verdict | void;
  predelivery(ctx: PredeliveryContext): PredeliveryVerdict | void;
}

export type HookName = keyof PolicyHooks;

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

/**
 * What a hook may return: a verdict, nothing (`undefined` or `null`: the default decides), or a promise of either
 * (an `async` hook, or one that returns a promise).
 */
export type HookResult<V> = V | null | void | Promise<V | null | void>;

/** Hook name → the signature of the default export of the script file of that name. */
export interface PolicyHooks {
  connect(ctx: ConnectContext): HookResult<Verdict>;
  helo(ctx: HeloContext): HookResult<Verdict>;
  auth(ctx: AuthContext): HookResult<Verdict>;
  mailfrom(ctx: MailFromContext): HookResult<Verdict>;
  rcptto(ctx: RcptToContext): HookResult<Verdict>;
  data(ctx: DataContext): HookResult<Verdict>;
  predelivery(ctx: PredeliveryContext): HookResult<PredeliveryVerdict>;
}

export type HookName = keyof PolicyHooks;

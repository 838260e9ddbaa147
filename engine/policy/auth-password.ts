/**
 * The one place the client's AUTH password (the auth hook's `ctx.auth.password`, which scripts may check
 * themselves) is kept out of what Postern shows or stores about a script call: a context printed by
 * `postern try` or recorded for `postern replay`, and the message of an error the script threw, which V8
 * writes with the value in it (`JSON.parse(password)`: `"…" is not valid JSON`; `BigInt(password)`). As
 * Dovecot (auth_verbose_passwords=no) and Postfix, the password is never written out.
 */

/** What stands for the password where it was shown. */
export const PASSWORD_SHOWN = '********';

/** The auth hook's password in `ctx`, or '' (another hook, or EXTERNAL). */
export function authPassword(hook: string, ctx: object): string {
  if (hook !== 'auth') return '';
  const auth = (ctx as { auth?: unknown }).auth;
  const password = typeof auth === 'object' && auth !== null ? (auth as { password?: unknown }).password : undefined;
  return typeof password === 'string' ? password : '';
}

/** `ctx` with the auth hook's password replaced by `mask` ('' for a recording, which replay runs as it is). */
export function withoutPassword(hook: string, ctx: object, mask = PASSWORD_SHOWN): object {
  if (!authPassword(hook, ctx)) return ctx;
  const { auth } = ctx as { auth: object };
  return { ...ctx, auth: { ...auth, password: mask } };
}

/** `text` (what a script call failed with) with every occurrence of the auth hook's password masked. */
export function hidePassword(hook: string, ctx: object, text: string): string {
  const password = authPassword(hook, ctx);
  return password ? text.split(password).join(PASSWORD_SHOWN) : text;
}

/**
 * Failed password guesses per account (limits.authFailuresPerAccount). The per-address limit does not slow a
 * guesser that spreads its guesses over many addresses (a botnet: 10,000 addresses, 20 guesses each, all at one
 * account); this counts them where they meet, at the account, in the counter store (so over every worker and,
 * with Redis, every node).
 *
 * Over the limit the account's password logins are deferred (454 4.7.0) until the window ends, right password
 * or not — the guesser learns nothing, and gets no more than the limit per window. A stranger could lock a real
 * user out that way, so two kinds of login are never held back: a certificate (EXTERNAL: nothing to guess), and
 * a password login from an address (IPv6: its counted network) that logged in as that account within
 * KNOWN_ADDRESS_SECONDS. The trade-off Dovecot's auth policy server (weakforced) makes for per-login tarpits: a user
 * on a new address waits out the window while the account is under attack, and a user who never logs in with a
 * password is never held back.
 */
import { userKey } from './users-file.ts';
import { clientText, type Logger } from '../logging/logger.ts';
import { STORE_KEYS, type CounterStore } from '../store/counter-store.ts';

/** How long an address that logged in as an account stays exempt from that account's lock (from that login). */
export const KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600;

export interface AccountFailureLimit {
  /** Failed password guesses at one account within the window; 0: no limit. */
  readonly count: number;
  readonly windowMs: number;
}

/** The account a password login names, as the users file keys it; null for a mechanism without a password. */
export function guessedAccount(mechanism: string, username: string): string | null {
  if (mechanism === 'EXTERNAL') return null;
  const account = userKey(username.trim());
  return account === '' ? null : account;
}

const windowSeconds = (limit: AccountFailureLimit): number => Math.max(1, Math.ceil(limit.windowMs / 1000));

/**
 * The account's password logins from `countedIp` are deferred now: its failures reached the limit and this
 * address did not log in as it recently. Rejects when the store cannot answer (the caller fails closed).
 */
export async function accountLocked(store: CounterStore, limit: AccountFailureLimit, account: string, countedIp: string): Promise<boolean> {
  if (limit.count <= 0) return false;
  if ((await store.get(STORE_KEYS.accountAuthFailures(account))) < limit.count) return false;
  return (await store.get(STORE_KEYS.accountKnownAddress(account, countedIp))) === 0;
}

/**
 * Count a failed password guess at `account`: the window opens with the first one; `reachedLimit` for the one that
 * locks it (logged once per window, for the administrator). Counted as a rate, so that an
 * account at its limit is a key the memory store keeps over others (guesses at random names do not evict it).
 */
export async function accountGuessFailed(store: CounterStore, limit: AccountFailureLimit, account: string): Promise<{ reachedLimit: boolean }> {
  if (limit.count <= 0) return { reachedLimit: false };
  const counted = await store.rate(STORE_KEYS.accountAuthFailures(account), limit.count, windowSeconds(limit));
  return { reachedLimit: counted.allowed && counted.count === limit.count };
}

/** `countedIp` logged in as `account` (by any mechanism): its password logins pass the account's lock from now on. */
export async function accountLoggedIn(store: CounterStore, limit: AccountFailureLimit, account: string, countedIp: string): Promise<void> {
  if (limit.count <= 0) return;
  await store.add(STORE_KEYS.accountKnownAddress(account, countedIp), 1, KNOWN_ADDRESS_SECONDS);
}

/**
 * Once per window, when an account's failures reach the limit: at warn, since guesses spread over many addresses
 * leave no address for fail2ban to ban, and its users on new addresses are deferred from now on.
 */
export function accountLockedWarning(log: Logger, account: string, limit: AccountFailureLimit, fields: Record<string, unknown>): void {
  log.warn({ ...fields, account: clientText(account), failures: limit.count, windowMs: limit.windowMs },
    'account reached limits.authFailuresPerAccount: its password logins are deferred (454 4.7.0) until the window ends, except from addresses that logged in as it recently and with a client certificate');
}

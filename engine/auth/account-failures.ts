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
import { STORE_KEYS, giveBackPlace, type CounterStore } from '../store/counter-store.ts';

/** How long an address that logged in as an account stays exempt from that account's lock (from that login), at least. */
export const KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600;

/**
 * Logins are recorded once per period of half that, each record kept three periods from its first login, and looked up
 * in the last three periods: an address is exempt for at least KNOWN_ADDRESS_SECONDS after its latest login (at most
 * half as long again). One record kept from the first login, as the store's counters are (a later add() does not
 * extend them), a user logging in every day from home lost the exemption 30 days after the first of those logins.
 */
const KNOWN_PERIOD_MS = (KNOWN_ADDRESS_SECONDS * 1000) / 2;
const KNOWN_PERIODS = 3;
const knownPeriod = (): number => Math.floor(Date.now() / KNOWN_PERIOD_MS);

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

/** A password guess at an account, as its limit lets it through (claimAccountGuess). */
export interface AccountGuess {
  /** Not to be decided: the account reached its limit, and this address did not log in as it recently. */
  readonly deferred: boolean;
  /**
   * The guess was decided: a failed one keeps the place it took in the count (`reachedLimit`: it took the last one,
   * said once per window for the administrator), a right one gives it back. Rejects when the store cannot answer.
   */
  settle(failed: boolean): Promise<{ reachedLimit: boolean }>;
}

const NOT_COUNTED: AccountGuess['settle'] = () => Promise.resolve({ reachedLimit: false });
const UNLIMITED: AccountGuess = { deferred: false, settle: NOT_COUNTED };

/**
 * Take a place for a guess at `account` in its failure count before the password is checked. Checked first and
 * counted after the verification, every guess of a botnet sent at the same moment passed the check (count 0) and
 * was decided: 20 guesses at once at a limit of 5, all decided. Over the limit, the guess is deferred unless
 * `countedIp` logged in as the account recently (then it is decided, counted at its address only). Rejects when
 * the store cannot answer (the caller fails closed).
 */
export async function claimAccountGuess(store: CounterStore, limit: AccountFailureLimit, account: string, countedIp: string): Promise<AccountGuess> {
  if (limit.count <= 0) return UNLIMITED;
  const key = STORE_KEYS.accountAuthFailures(account);
  // A rate: an account at its limit is a key the memory store keeps over others (guesses at random names do not evict it).
  const place = await store.rate(key, limit.count, windowSeconds(limit));
  if (place.allowed) {
    return {
      deferred: false,
      settle: async (failed) => {
        if (failed) return { reachedLimit: place.count === limit.count };
        await giveBackPlace(store, key, windowSeconds(limit));
        return { reachedLimit: false };
      },
    };
  }
  return { deferred: !await knownAddress(store, account, countedIp), settle: NOT_COUNTED };
}

/** `countedIp` logged in as `account` (by any mechanism): its password logins pass the account's lock from now on. */
export async function accountLoggedIn(store: CounterStore, limit: AccountFailureLimit, account: string, countedIp: string): Promise<void> {
  if (limit.count <= 0) return;
  await store.add(STORE_KEYS.accountKnownAddress(account, countedIp, knownPeriod()), 1, (KNOWN_PERIODS * KNOWN_PERIOD_MS) / 1000);
}

/** `countedIp` logged in as `account` within the last KNOWN_PERIODS periods (see KNOWN_PERIOD_MS). */
async function knownAddress(store: CounterStore, account: string, countedIp: string): Promise<boolean> {
  const now = knownPeriod();
  for (let period = now; period > now - KNOWN_PERIODS; period--) {
    if ((await store.get(STORE_KEYS.accountKnownAddress(account, countedIp, period))) > 0) return true;
  }
  return false;
}

/**
 * Once per window, when an account's failures reach the limit: at warn, since guesses spread over many addresses
 * leave no address for fail2ban to ban, and its users on new addresses are deferred from now on.
 */
export function accountLockedWarning(log: Logger, account: string, limit: AccountFailureLimit, fields: Record<string, unknown>): void {
  log.warn({ ...fields, account: clientText(account), failures: limit.count, windowMs: limit.windowMs },
    'account reached limits.authFailuresPerAccount: its password logins are deferred (454 4.7.0) until the window ends, except from addresses that logged in as it recently and with a client certificate');
}

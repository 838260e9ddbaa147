/**
 * Places of AUTH guesses being decided (AuthFailureStore.claim), counted in a store every process of one server
 * shares (the supervisor's memory store under `postern serve` without Redis). With Redis the claim is one script
 * over the failures and the places together (redis-store.ts): this is for the failures that live in each
 * process's memory, relayed by the supervisor.
 */
import type { GuessPlaces } from '../auth/failure-limiter.ts';
import { STORE_KEYS, giveBackPlace, type CounterStore } from './counter-store.ts';

/**
 * How long a count of places lives (s): a process that dies deciding a guess never gives its place back. Longer
 * than any decision (an argon2 verification and an auth script); short, because each address guessing keeps a
 * key among the built-in limits' (store.maxKeys) this long after its first guess.
 */
const PLACES_SECONDS = 30;

export function guessPlaces(store: CounterStore): GuessPlaces {
  return {
    async take(key, room) {
      if (room < 1) return null;
      const r = await store.rate(STORE_KEYS.authGuesses(key), room, PLACES_SECONDS);
      return r.allowed ? r.count : null;
    },
    async giveBack(key) {
      await giveBackPlace(store, STORE_KEYS.authGuesses(key), PLACES_SECONDS);
    },
  };
}

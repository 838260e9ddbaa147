/**
 * Who has had the isolates lately: the time each client's calls held one on an isolate thread, halving every
 * HALF_LIFE_MS. When calls queue for an isolate, the one whose client has had the least goes first (see
 * Sandbox.#nextWaiter): a client whose calls run to their time limit cannot make the calls of others queued
 * behind it fail at their deadlines, as it did in first-come order. A client is an address (an IPv6 client by
 * its /64, as the connection limits count it): a session per message or many sessions share one share.
 */
import { countedAddress } from '../connection-limits/counted-address.ts';

export const HALF_LIFE_MS = 10_000;
/** Clients remembered at most; past it those used least recently are forgotten (they start again from 0). */
const MAX_CLIENTS = 4096;

/** The client a call's connection facts name, or null (no connection: predelivery, replay). */
export function clientOf(connection: object | undefined): string | null {
  const address = (connection as { remoteAddress?: unknown } | undefined)?.remoteAddress;
  return typeof address === 'string' && address !== '' ? countedAddress(address, 64) : null;
}

export class ClientShares {
  /** Decayed milliseconds as of `at`, by client; in order of last charge (the Map's order). */
  readonly #used = new Map<string, { ms: number; at: number }>();

  /** `client` held an isolate for `ms` until `now`. */
  charge(client: string, ms: number, now: number): void {
    const entry = this.#used.get(client);
    const before = entry ? decayed(entry, now) : 0;
    if (entry) this.#used.delete(client); // to the end: the most recently charged
    this.#used.set(client, { ms: before + Math.max(0, ms), at: now });
    if (this.#used.size > MAX_CLIENTS) this.#used.delete(this.#used.keys().next().value!);
  }

  /** `client`'s decayed isolate time at `now`. */
  usage(client: string, now: number): number {
    const entry = this.#used.get(client);
    return entry ? decayed(entry, now) : 0;
  }

  get size(): number {
    return this.#used.size;
  }
}

const decayed = (entry: { ms: number; at: number }, now: number): number => entry.ms * 2 ** (-Math.max(0, now - entry.at) / HALF_LIFE_MS);

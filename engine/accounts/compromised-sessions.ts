/**
 * The account page's sessions of an account whose device was revoked as lost or stolen (keyCompromise) end, whoever
 * revoked it. The page's own revoke ends the account's other sessions itself; `postern pki revoke --reason
 * keyCompromise` reaches the page only as the reloaded issued.json (generation.revokedDevices). Without this a
 * browser left signed in by password on the stolen laptop went on issuing itself devices after the administrator
 * revoked it.
 */
import type { RevokedDevices } from '../pki/revoked-devices.ts';

export class CompromisedSessions {
  #known: ReadonlyMap<string, string>;
  readonly #revokedHere = new Set<string>();

  /** `initial`: what the generation in force at the page's start had revoked (no session is older). */
  constructor(initial: RevokedDevices) {
    this.#known = initial.compromised;
  }

  /** The page revoked this serial itself, and ended the account's other sessions, keeping the one that asked. */
  revokedHere(serial: string): void {
    this.#revokedHere.add(serial);
  }

  /** The accounts with a certificate revoked as compromised since the last call, elsewhere than on the page. */
  newlyCompromised(revoked: RevokedDevices): string[] {
    const before = this.#known;
    if (before === revoked.compromised) return [];
    this.#known = revoked.compromised;
    const accounts = new Set<string>();
    for (const [serial, identity] of revoked.compromised) if (!before.has(serial) && !this.#revokedHere.has(serial)) accounts.add(identity);
    return [...accounts];
  }
}

/**
 * What the page itself took back, refused by the page from that moment: certificates it revoked, and the keys of
 * devices lost or stolen (a certificate revoked so, a key of the device's own removed so). The page otherwise judges
 * a certificate by the CRL and pin table of the generation in force, which a reload brings in after the change:
 * after its debounce at least, and not at all while reloads are refused (an administrator's half-edited users file
 * or script). Meanwhile a certificate revoked as lost or stolen signed in again right after "Your account is signed
 * out everywhere else", and issued itself a new certificate that outlived the revocation.
 *
 * A certificate revoked as no longer used or replaced is refused by its fingerprint only: another certificate with
 * the same key is left to the CRL and pins in force, as before. A stolen key is refused in any certificate (as
 * `postern pins` refuses to pin it), until the account that lost it registers it again on the page. Another account's
 * registration of it forgets nothing: a key is public (sent in TLS handshakes), and the pin table in force still names
 * the account that lost it, so the thief registering it on an account of their own signed in as the victim again.
 *
 * Kept in the data directory (revokedHereFile), written whole (writeFileAtomic: fsynced, renamed) before the page says
 * the change is made, and read again when the page starts: in memory only, a restart of the queue process (a crash,
 * the supervisor replacing it, the server restarted) forgot a stolen key, and a certificate of another CA of the
 * listener's (one the page cannot revoke in) signed in again by its emailAddress. A fingerprint is 64 characters: a
 * few thousand revocations make a file of some hundred kilobytes.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { removeLeftoverTemporaries, writeFileAtomic } from '../spool/fsync.ts';

interface Certificate { fingerprint: { sha256: string }; pin: { sha256: string } }

/** What the file holds. */
interface Saved { certificates: string[]; keys: Record<string, string> }

/** Where the page keeps what it took back: `<dataDir>/accounts/revoked-here.json`. */
export function revokedHereFile(dataDir: string): string {
  return join(dataDir, 'accounts', 'revoked-here.json');
}

export class RevokedHere {
  readonly #certificates = new Set<string>();
  /** Stolen keys (pin hex) and the account each was taken back from (lower case). */
  readonly #keys = new Map<string, string>();
  /** Where it is kept; null: in memory only. */
  readonly #file: string | null;
  /** The writes one after another, each of the whole state as it is when it starts. */
  #writing: Promise<void> = Promise.resolve();

  constructor(file: string | null = null) {
    this.#file = file;
  }

  /**
   * What `file` holds (nothing when it does not exist). A file that cannot be read or parsed throws: a page that
   * started without it would let a stolen key in again.
   */
  static async open(file: string): Promise<RevokedHere> {
    const here = new RevokedHere(file);
    // Left by a write a kill cut short (the file itself is the old one or the new one, never half of one).
    await removeLeftoverTemporaries(join(file, '..'));
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return here;
      throw new Error(`${file}: cannot read what the account page revoked: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    let saved: Saved;
    try {
      saved = JSON.parse(text) as Saved;
      if (!Array.isArray(saved.certificates) || typeof saved.keys !== 'object' || saved.keys === null) throw new Error('not { certificates, keys }');
    } catch (err) {
      throw new Error(`${file}: not what the account page writes (${(err as Error).message}): move it away to start without what it revoked`);
    }
    for (const fingerprint of saved.certificates) here.#certificates.add(String(fingerprint).toLowerCase());
    for (const [pin, identity] of Object.entries(saved.keys)) here.#keys.set(pin.toLowerCase(), String(identity).toLowerCase());
    return here;
  }

  /** The certificate of this SHA-256 fingerprint (hex) was revoked on the page. */
  revoked(fingerprintSha256: string): Promise<void> {
    this.#certificates.add(fingerprintSha256.toLowerCase());
    return this.#save();
  }

  /** The key (SHA-256 of its SubjectPublicKeyInfo, hex) was taken back on the page by `identity` as lost or stolen. */
  stolen(pinSha256: string, identity: string): Promise<void> {
    this.#keys.set(pinSha256.toLowerCase(), identity.toLowerCase());
    return this.#save();
  }

  /** Registered on the page by `identity`: the account that lost it has it back; any other's registration changes nothing. */
  registered(pinSha256: string, identity: string): Promise<void> {
    const pin = pinSha256.toLowerCase();
    if (this.#keys.get(pin) !== identity.toLowerCase()) return Promise.resolve();
    this.#keys.delete(pin);
    return this.#save();
  }

  refuses(c: Certificate | null | undefined): boolean {
    return !!c && (this.#certificates.has(c.fingerprint.sha256.toLowerCase()) || this.#keys.has(c.pin.sha256.toLowerCase()));
  }

  /** Settles once the state as it is now is on disk (refused at once in memory either way). */
  #save(): Promise<void> {
    const file = this.#file;
    if (!file) return Promise.resolve();
    const write = this.#writing.catch(() => undefined).then(() => {
      const saved: Saved = { certificates: [...this.#certificates], keys: Object.fromEntries(this.#keys) };
      return writeFileAtomic(file, `${JSON.stringify(saved)}\n`);
    });
    this.#writing = write;
    return write;
  }
}

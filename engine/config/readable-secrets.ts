/**
 * Secret files every local user can read (input-file-modes.ts: readableKeyWarnings), said by the running server too:
 * at start and at a reload, at error, naming the file and its mode, as ssh does of a private key. `postern check`
 * says them as warnings, but a server started without it (a container, `npm start`, a reload after a copy or an
 * unpacked archive reset a mode) said nothing. Said, not refused: a container's mounted secrets are often 0644 and
 * readable by its one user only (the reason the data directory's mode is a warning too).
 */
import type { Logger } from '../logging/logger.ts';
import { pkiPaths } from '../pki/layout.ts';
import { readableKeyWarnings } from './input-file-modes.ts';
import type { LoadedConfig } from './load-config.ts';

/** One line per secret file (or a postern.yaml holding a Redis password) every local user can read. */
export function readableSecretLines(loaded: LoadedConfig): string[] {
  return readableKeyWarnings(loaded, loaded.config.pki.dir && pkiPaths(loaded.config.pki.dir).caKey);
}

/** A line still true is said again at a reload once this long has passed since it was (a reminder, not a flood). */
export const READABLE_SECRET_REPEAT_MS = 3600_000;

/**
 * The lines of one server (a single process's reloader, or `postern serve`'s supervisor), each at error when it is
 * new, or was last said READABLE_SECRET_REPEAT_MS ago. Said at every reload, a table rewritten every minute (a
 * generated blocklist) made every readable secret an error line a minute, for ever. A line that stopped being true
 * (chmod o-r) is forgotten: said at once should the file become readable again.
 */
export class ReadableSecretsReport {
  #said = new Map<string, number>();
  readonly #now: () => number;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** For the configuration now in force. */
  say(loaded: LoadedConfig, log: Logger): void {
    const now = this.#now();
    const said = new Map<string, number>();
    for (const line of readableSecretLines(loaded)) {
      const last = this.#said.get(line);
      if (last !== undefined && now - last < READABLE_SECRET_REPEAT_MS) {
        said.set(line, last);
        continue;
      }
      log.error(line);
      said.set(line, now);
    }
    this.#said = said;
  }
}

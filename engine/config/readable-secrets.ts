/**
 * Secret files every local user can read (input-file-modes.ts: readableKeyWarnings), said by the running server too:
 * at start and at each reload, at error, naming the file and its mode, as ssh does of a private key. `postern check`
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

/** Each at error, for the configuration now in force. */
export function logReadableSecrets(loaded: LoadedConfig, log: Logger): void {
  for (const line of readableSecretLines(loaded)) log.error(line);
}

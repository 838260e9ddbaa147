/**
 * Whether a server could use the configuration's `dataDir` (it creates it when missing): a writable folder, or
 * one still to be created under a writable one. `postern check` and a start (`postern serve`'s supervisor,
 * startPostern) ask the same question before anything is locked or written, so both refuse with the same
 * `file:line:col: dataDir: …` line. A reload cannot change dataDir, so the generation's build does not look.
 */
import { access, constants, readFile, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ConfigError } from './config-error.ts';
import type { LoadedConfig } from './load-config.ts';

/**
 * The problem with `loaded`'s dataDir, as a ConfigError naming where the file sets it; null when it is usable.
 * `starting`: a server is about to use it as this user, which root must not do in another user's data directory.
 */
export async function dataDirError(loaded: LoadedConfig, { starting = false } = {}): Promise<ConfigError | null> {
  const problem = await dataDirUnusable(loaded.config.dataDir) ?? (starting ? await rootInOthersDataDir(loaded.config.dataDir) : null);
  if (!problem) return null;
  const at = loaded.locate?.(['dataDir']) ?? {};
  const root = loaded.locate?.([]) ?? {};
  // Not written in the file (the default): locate falls back to the document itself, which is no place to point at.
  const written = at.line !== undefined && (at.line !== root.line || at.column !== root.column);
  return new ConfigError([{ file: loaded.file, ...(written ? at : {}), path: 'dataDir', message: problem }]);
}

async function dataDirUnusable(dir: string): Promise<string | null> {
  let at = dir;
  for (;;) {
    try {
      if (!(await stat(at)).isDirectory()) return at === dir ? `${dir} is not a folder` : `${dir} cannot be created: ${at} is not a folder`;
      await access(at, constants.W_OK | constants.X_OK);
      return null;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code === 'ENOENT' || code === 'ENOTDIR') && dirname(at) !== at) { at = dirname(at); continue; }
      return `${at === dir ? dir : `${dir} cannot be created: ${at}`} cannot be written by this user (${code})`;
    }
  }
}

/**
 * Root starting a server in a data directory that belongs to another user (the server's own, as the systemd unit
 * runs it: `sudo postern serve` to try something): the spool, locks and crash records it writes would be root's,
 * mode 0600, and that user's server could then not start, nor deliver the mail root accepted. Postern does not
 * change its user, so it is refused. Not for `postern check`: an administrator's `sudo postern check` asks about
 * the configuration, not about who runs the server.
 */
async function rootInOthersDataDir(dir: string): Promise<string | null> {
  if (process.getuid?.() !== 0) return null;
  const owner = await stat(dir).then((s) => s.uid, () => 0); // still to be created: root's own
  if (owner === 0) return null;
  const name = await readFile('/etc/passwd', 'utf8').then((text) => text.split('\n').find((l) => l.split(':')[2] === String(owner))?.split(':')[0], () => undefined);
  return `${dir} belongs to uid ${owner}${name ? ` (${name})` : ''}: run the server as that user, not as root: what root wrote there (mode 0600) would stop that user's server, and the mail root accepted with it`;
}

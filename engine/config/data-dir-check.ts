/**
 * Whether a server could use the configuration's `dataDir` (it creates it when missing): a writable folder, or
 * one still to be created under a writable one. `postern check` and a start (`postern serve`'s supervisor,
 * startPostern) ask the same question before anything is locked or written, so both refuse with the same
 * `file:line:col: dataDir: …` line. A reload cannot change dataDir, so the generation's build does not look.
 */
import { access, constants, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ConfigError } from './config-error.ts';
import type { LoadedConfig } from './load-config.ts';

/** The problem with `loaded`'s dataDir, as a ConfigError naming where the file sets it; null when it is usable. */
export async function dataDirError(loaded: LoadedConfig): Promise<ConfigError | null> {
  const problem = await dataDirUnusable(loaded.config.dataDir);
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

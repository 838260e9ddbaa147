/**
 * A configured scripts folder must be there and readable. One that vanished (a failed deploy, a clone half
 * done, an unmounted volume) would otherwise read as "no scripts": policy silently off while the server
 * keeps taking mail. Like Postfix with a missing map, the build is refused instead, naming the folder, the
 * key that names it and the reason; a reload then keeps the generation in force.
 *
 * An existing empty folder is a legitimate "no scripts". So is a missing default folder (top-level
 * `scripts` not written in the configuration) at start, as documented, unless the generation in force
 * read scripts from it: gone at a reload, it is refused like a named one.
 */
import { readdir, stat } from 'node:fs/promises';
import type { LoadedConfig } from '../config/load-config.ts';
import { formatProblem } from '../config/config-error.ts';

/** What each failure code says about a folder. */
const REASONS: Record<string, string> = {
  ENOENT: 'does not exist',
  ENOTDIR: 'is not a folder',
  EACCES: 'cannot be read',
  EPERM: 'cannot be read',
};

/**
 * Whether `dir` is there (`present`) or may be treated as holding no scripts (`absent`); throws the
 * problem line (`file[:line:col]: key: message`) when it must be there and is not.
 * `inForce`: the folders the running generation read scripts from (a reload's build).
 */
export async function checkScriptsFolder(dir: string, loaded: LoadedConfig, inForce?: ReadonlySet<string>): Promise<'present' | 'absent'> {
  let code: string;
  try {
    if (!(await stat(dir)).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    await readdir(dir);
    return 'present';
  } catch (err) {
    code = (err as NodeJS.ErrnoException).code ?? 'EIO';
  }
  const named = loaded.scriptFolders?.find((f) => f.folder === dir);
  const wasRead = inForce?.has(dir) ?? false;
  if (code === 'ENOENT' && !named && !wasRead) return 'absent';
  const reason = `${REASONS[code] ?? 'cannot be read'} (${code})`;
  const hint = code === 'ENOENT' ? ': put it back (an empty folder means no scripts)' : '';
  if (named) {
    throw formatProblem({ file: loaded.file, line: named.line, column: named.column, path: named.key, message: `scripts folder ${dir} ${reason}${hint}` });
  }
  const message = wasRead
    ? `scripts folder ${dir} (the default) ${reason}, and the running generation's scripts came from it${hint}`
    : `scripts folder ${dir} (the default) ${reason}`;
  throw formatProblem({ file: loaded.file, path: 'scripts', message });
}

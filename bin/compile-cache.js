// The code Node compiles for `postern` (its TypeScript stripped, then V8's bytecode) kept between runs, so a
// command or a restarted server process starts with about half the CPU (`postern --version`: 0.72 s of CPU
// without, 0.33 s with). Plain JavaScript, run before any TypeScript is loaded (the whole module graph is
// compiled before its first line runs).
//
// Bytecode read from a folder another user can write would run as this user, so the cache is used only in a
// folder of this user's own — systemd's `$CACHE_DIRECTORY`, `$XDG_CACHE_HOME/postern` or `~/.cache/postern` — whose every ancestor only root or
// this user can change; otherwise there is none (a quiet optimisation: nothing depends on it). NODE_COMPILE_CACHE
// names another folder (the administrator's choice), NODE_DISABLE_COMPILE_CACHE=1 turns it off (Node's own).
import { mkdirSync, statSync } from 'node:fs';
import { enableCompileCache } from 'node:module';
import { dirname, isAbsolute, join } from 'node:path';

/**
 * Only root or this user own it, and no one else may write it (no group or world write bit) — or, like /tmp, it has
 * the sticky bit, so others cannot rename or remove what is in it (the folder below it is checked in its turn).
 */
function ownAndClosed(path, uid) {
  const st = statSync(path);
  return (st.uid === uid || st.uid === 0) && ((st.mode & 0o022) === 0 || (st.mode & 0o1000) !== 0);
}

/** `dir` and every folder above it can be changed by root or this user only. */
function safeFolder(dir, uid) {
  for (let at = dir; ; at = dirname(at)) {
    if (!ownAndClosed(at, uid)) return false;
    if (dirname(at) === at) return true;
  }
}

export function cacheFolder(env = process.env) {
  const uid = process.getuid?.();
  if (uid === undefined) return null;
  // systemd's CacheDirectory=postern (examples/systemd/postern.service) first: a service's home is often hidden.
  const service = env.CACHE_DIRECTORY?.split(':')[0];
  const base = env.XDG_CACHE_HOME || (env.HOME ? join(env.HOME, '.cache') : '');
  const dir = service || (base && join(base, 'postern'));
  if (!dir || !isAbsolute(dir)) return null;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    return safeFolder(dir, uid) ? dir : null;
  } catch {
    return null; // no home, a read-only one (ProtectHome=): no cache
  }
}

/** Enables the cache for this process and, through NODE_COMPILE_CACHE, for the server's child processes. */
export function enablePosternCompileCache() {
  if (process.env.NODE_DISABLE_COMPILE_CACHE) return;
  if (!process.env.NODE_COMPILE_CACHE) {
    const dir = cacheFolder();
    if (!dir) return;
    process.env.NODE_COMPILE_CACHE = dir;
  }
  enableCompileCache(process.env.NODE_COMPILE_CACHE);
}

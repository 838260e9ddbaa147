/**
 * The policy hooks and the script file names that implement them (`<hook>.ts`, `.js` or `.mjs`).
 */
import type { HookName } from './api/index.ts';

/** In connection order; predelivery runs later, in the queue. */
export const HOOK_NAMES: readonly HookName[] = Object.freeze([
  'connect', 'helo', 'auth', 'mailfrom', 'rcptto', 'data', 'predelivery',
]);

export const SCRIPT_EXTENSIONS: readonly string[] = Object.freeze(['.ts', '.js', '.mjs']);

export function isHookName(name: string): name is HookName {
  return (HOOK_NAMES as readonly string[]).includes(name);
}

/**
 * The hook a file name implements, or null for anything else — including editor leftovers such as
 * `.auth.ts.swp`, `auth.ts~` or `#auth.ts#`, which must never be mistaken for a script.
 */
export function parseScriptFileName(baseName: string): { hook: HookName; typescript: boolean } | null {
  const dot = baseName.lastIndexOf('.');
  if (dot <= 0) return null;
  const stem = baseName.slice(0, dot);
  const ext = baseName.slice(dot);
  if (!isHookName(stem) || !SCRIPT_EXTENSIONS.includes(ext)) return null;
  return { hook: stem, typescript: ext === '.ts' };
}

/**
 * Reads a scripts folder: `<hook>.ts`, `.js` or `.mjs` for each known hook, TypeScript stripped. Other
 * files (notes, editor swap and backup files) are ignored.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { HookName } from './api/index.ts';
import { ScriptError, ScriptErrors } from './errors.ts';
import { HOOK_NAMES, parseScriptFileName } from './hooks.ts';
import { prepareScripts, type ScriptFile, type ScriptSource } from './script-source.ts';

/**
 * The scripts in `dir`, in hook order. A folder that does not exist holds no scripts (the built-in rules
 * apply). Throws ScriptErrors listing every problem: two files for one hook, TypeScript that cannot be
 * stripped, unreadable files.
 */
export async function loadScriptDirectory(dir: string): Promise<ScriptSource[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const byHook = new Map<HookName, string[]>();
  for (const name of names.sort()) {
    const parsed = parseScriptFileName(name);
    if (parsed) byHook.set(parsed.hook, [...(byHook.get(parsed.hook) ?? []), name]);
  }

  const errors: ScriptError[] = [];
  const files: ScriptFile[] = [];
  for (const hook of HOOK_NAMES) {
    const found = byHook.get(hook) ?? [];
    if (found.length > 1) {
      errors.push(new ScriptError(join(dir, found[0]!), 1, 1,
        `hook "${hook}" has more than one script (${found.join(', ')}): keep one`));
      continue;
    }
    if (found.length === 0) continue;
    const file = join(dir, found[0]!);
    try {
      if (!(await stat(file)).isFile()) throw new Error('not a regular file');
      files.push({ file, text: await readFile(file, 'utf8') });
    } catch (e) {
      errors.push(new ScriptError(file, 1, 1, `cannot read: ${(e as Error).message}`));
    }
  }

  const { scripts, errors: stripErrors } = await prepareScripts(files);
  errors.push(...stripErrors);
  if (errors.length) throw new ScriptErrors(errors);
  const order = (s: ScriptSource): number => HOOK_NAMES.indexOf(s.hook);
  return scripts.sort((a, b) => order(a) - order(b));
}

/**
 * Reads a scripts folder: `<hook>.ts`, `.js` or `.mjs` for each known hook, TypeScript stripped. Other
 * files (notes, editor swap and backup files) are ignored.
 */
import { readdir } from 'node:fs/promises';
import { InputFileError, readInputFile } from '../config/input-file.ts';
import { join } from 'node:path';
import { containsPrivateKey, privateKeyFileMessage } from '../certificates/key-material.ts';
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
      const text = await readScript(file);
      // A script named at a key by mistake (a symlink, say) is not compiled: no key material enters an isolate.
      if (containsPrivateKey(text)) errors.push(new ScriptError(file, 1, 1, privateKeyFileMessage('a policy script')));
      else files.push({ file, text });
    } catch (e) {
      errors.push(e instanceof ScriptError ? e : new ScriptError(file, 1, 1, `cannot read: ${(e as Error).message}`));
    }
  }

  const { scripts, errors: stripErrors } = await prepareScripts(files);
  errors.push(...stripErrors);
  if (errors.length) throw new ScriptErrors(errors);
  const order = (s: ScriptSource): number => HOOK_NAMES.indexOf(s.hook);
  return scripts.sort((a, b) => order(a) - order(b));
}

/** What a script's name ends with, as an author may write it (every one a module Node or tsc would take). */
const LOOKS_LIKE_A_SCRIPT = /\.(?:[cm]?[jt]s|tsx|jsx)$/i;
/** Declarations (`postern.d.ts`, made for editors) and editor leftovers are no scripts. */
const NOT_A_SCRIPT = /\.d\.[cm]?ts$|^[.#]|~$/i;

/**
 * Files of `dir` that look like a script but implement no hook, so never run: `rcptTo.ts`, `mail_from.ts`,
 * `rcptto.cjs`. The policy their author meant to add is silently missing (and the built-in rules decide), so
 * each is worth a warning. Nothing when the folder cannot be read (loadScriptDirectory reports that).
 */
export async function strayScriptFiles(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.sort()
    .filter((name) => LOOKS_LIKE_A_SCRIPT.test(name) && !NOT_A_SCRIPT.test(name) && !parseScriptFileName(name))
    .map((name) => join(dir, name));
}

/**
 * The longest script file read. Every isolate compiles and holds its own copy of a script, and the reloader
 * digests the folder too: a 1.5 GB file there (a log or an image copied in by mistake, a symlink to one) was read
 * whole, twice, in every process (1.6 GB of memory each time) before it failed to load.
 */
export const MAX_SCRIPT_BYTES = 8 * 1024 * 1024;

/**
 * A script file's text (readInputFile: a FIFO in its place is not opened for ever, nothing past MAX_SCRIPT_BYTES is
 * read); a file too long or written to as it is read is refused at its first line.
 */
async function readScript(file: string): Promise<string> {
  try {
    return (await readInputFile(file, MAX_SCRIPT_BYTES)).toString('utf8');
  } catch (err) {
    if (err instanceof InputFileError && err.reason === 'too long') throw new ScriptError(file, 1, 1, `is ${err.size} bytes, longer than a policy script may be (${MAX_SCRIPT_BYTES}): not read`);
    if (err instanceof InputFileError && err.reason === 'changed') throw new ScriptError(file, 1, 1, err.message);
    throw err;
  }
}

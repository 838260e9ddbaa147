/**
 * A policy script ready for the sandbox: its hook (from the file name) and JavaScript source (TypeScript
 * already stripped, positions unchanged).
 */
import { basename } from 'node:path';
import type { HookName } from './api/index.ts';
import { ScriptError, ScriptErrors } from './errors.ts';
import { parseScriptFileName } from './hooks.ts';
import { stripTypes } from './type-strip.ts';

export interface ScriptSource {
  readonly hook: HookName;
  /** Path used in stack traces and error messages. */
  readonly file: string;
  /** JavaScript module text. For `.ts` files this is the stripped text: never strip it a second time. */
  readonly source: string;
}

export interface ScriptFile {
  file: string;
  text: string;
}

/** Prepare several files at once (one stripping pass); every problem is reported, not just the first. */
export async function prepareScripts(files: readonly ScriptFile[]): Promise<{ scripts: ScriptSource[]; errors: ScriptError[] }> {
  const scripts: ScriptSource[] = [];
  const errors: ScriptError[] = [];
  const typescript: Array<{ file: string; text: string; hook: HookName }> = [];
  for (const { file, text } of files) {
    const name = parseScriptFileName(basename(file));
    if (!name) {
      errors.push(new ScriptError(file, 1, 1, 'not a policy script: the name must be <hook>.ts, .js or .mjs'));
      continue;
    }
    const body = text.replace(/^\uFEFF/, ''); // editors do not count a byte-order mark as a column
    if (name.typescript) typescript.push({ file, text: body, hook: name.hook });
    else scripts.push({ hook: name.hook, file, source: body });
  }
  const stripped = await stripTypes(typescript);
  stripped.forEach((result, i) => {
    const { file, hook } = typescript[i]!;
    if (result instanceof ScriptError) errors.push(result);
    else scripts.push({ hook, file, source: result });
  });
  return { scripts, errors };
}

/** Prepare one file; throws ScriptErrors when it cannot be. */
export async function prepareScript(file: string, text: string): Promise<ScriptSource> {
  const { scripts, errors } = await prepareScripts([{ file, text }]);
  if (errors.length) throw new ScriptErrors(errors);
  return scripts[0]!;
}

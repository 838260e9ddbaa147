/**
 * A child of `postern serve` reads postern.yaml itself, as it always did (it may have changed since its supervisor
 * read it: a worker started again after an edit not yet reloaded must run what the file says, as before), but when
 * the text it reads is the very text its supervisor parsed, it takes the supervisor's parse, handed over with the
 * running settings (cluster/running-handoff.ts), instead of parsing it again: the parse depends on the text, the
 * file's path and its folder alone. A child then starts without the YAML parser, the schema and zod (~100 ms of CPU
 * at each start of each worker and queue process), which its first reload loads.
 */
import { isDeepStrictEqual } from 'node:util';
import { dirname } from 'node:path';
import { parseConfig, type LoadedConfig, type NamedFolder } from './load-config.ts';
import type { Config } from './schema.ts';

/** What the supervisor hands over: the parse of `text`, read from `file`, as plain data. */
export interface HandedParse {
  file: string;
  text: string;
  config: Config;
  scriptFolders: readonly NamedFolder[];
}

/**
 * The parse to hand to a child, as it is now (a copy): only of a file (not a text given inline, nor the embedded
 * default), and only when it comes through JSON unchanged (every value of a configuration is plain data today; a
 * value that is not would make each child parse for itself, as before).
 */
export function parseToHand(loaded: LoadedConfig): HandedParse | undefined {
  if (loaded.text === undefined || !loaded.scriptFolders || loaded.baseDir !== dirname(loaded.file)) return undefined;
  const value = { file: loaded.file, text: loaded.text, config: loaded.config, scriptFolders: loaded.scriptFolders };
  const copy = JSON.parse(JSON.stringify(value)) as HandedParse;
  return isDeepStrictEqual(copy, value) ? copy : undefined;
}

/**
 * The configuration `file` holds, `text` being what was just read from it: the handed parse when it is of this text
 * from this file (a copy of its own, as a parse gives), else null (parse it). Where a key is written (`locate`, for a
 * problem the generation's build finds) comes from a parse of the text made at the first question.
 */
export function handedConfig(handed: HandedParse | undefined, file: string, text: string): LoadedConfig | null {
  if (!handed || handed.file !== file || handed.text !== text) return null;
  const baseDir = dirname(file);
  let parsed: LoadedConfig | undefined;
  return {
    config: structuredClone(handed.config), file, baseDir, scriptFolders: structuredClone(handed.scriptFolders), text,
    locate: (path) => (parsed ??= parseConfig(text, file, baseDir)).locate!(path),
  };
}

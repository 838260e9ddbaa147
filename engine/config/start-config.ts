/**
 * The configuration a process starts with: a file, a text (tests), or the embedded default. Its own module so
 * that a one-shot command (`postern queue list`, `status`) reads the configuration without loading the server.
 */
import { dirname } from 'node:path';
import { parseConfig, loadConfigFile, readConfigFile, type LoadedConfig } from './load-config.ts';
import { handedConfig, type HandedParse } from './handed-parse.ts';
import { DEFAULT_CONFIG_YAML } from './default-config.ts';

export interface ConfigSource {
  /** Path of postern.yaml; omitted: the embedded default, relative to `baseDir`. */
  configPath?: string;
  /** Configuration text instead of a file (tests). */
  configText?: string;
  /**
   * Read the configuration only if it is a regular file (load-config.ts loadConfigFile): a process of `postern
   * serve`, started again by its supervisor at any time, must fail with the reason, not wait on a FIFO for ever.
   */
  regularFileOnly?: boolean;
  baseDir?: string;
  /** A child of `postern serve`: its supervisor's parse, taken when the file still holds that text (handed-parse.ts). */
  handed?: HandedParse;
}

export function loadStartConfig(opts: ConfigSource): LoadedConfig {
  if (opts.configText !== undefined) return parseConfig(opts.configText, opts.configPath ?? '(inline)', opts.baseDir ?? process.cwd());
  if (opts.configPath && opts.handed) {
    const { file, text } = readConfigFile(opts.configPath, { regularFileOnly: opts.regularFileOnly });
    return handedConfig(opts.handed, file, text) ?? parseConfig(text, file, dirname(file));
  }
  if (opts.configPath) return loadConfigFile(opts.configPath, { regularFileOnly: opts.regularFileOnly });
  return parseConfig(DEFAULT_CONFIG_YAML, '(embedded default)', opts.baseDir ?? process.cwd());
}

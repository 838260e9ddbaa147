/**
 * Haraka for benchmark (h), the rate the issue sets as the one-message-per-connection target. Not a
 * dependency of Postern: the first `npm run bench` installs a pinned release into test/bench/.haraka
 * (git-ignored; optional plugins and install scripts left out: the benchmark uses only core plugins).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

export const HARAKA_VERSION = '3.3.4';
const dir = join(import.meta.dirname, '.haraka');
const main = join(dir, 'node_modules', 'Haraka', 'haraka.js');

/** The folder Haraka is installed in, installing it first if need be; null (with the reason) when that fails. */
export async function ensureHaraka(): Promise<{ dir: string } | { error: string }> {
  if (existsSync(main)) return { dir };
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'package.json'), '{ "private": true }\n');
  // npm run sets npm_execpath; run it with this Node (24), not whatever `npm` is first on PATH.
  const npm = process.env.npm_execpath;
  const [command, args] = npm ? [process.execPath, [npm]] : ['npm', []];
  try {
    await promisify(execFile)(command, [...args, 'install', '--no-save', '--no-audit', '--no-fund', '--omit=optional', '--ignore-scripts', `Haraka@${HARAKA_VERSION}`], { cwd: dir });
  } catch (e) {
    return { error: `installing Haraka ${HARAKA_VERSION} failed: ${(e as Error).message.split('\n')[0]}` };
  }
  return existsSync(main) ? { dir } : { error: `Haraka ${HARAKA_VERSION} installed, but ${main} is missing` };
}

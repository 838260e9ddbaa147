/** `postern check`: load and validate everything a start would, report every problem, start nothing. */
import { loadStartConfig } from '../app/postern.ts';
import { ConfigError } from '../config/config-error.ts';
import { validateGeneration } from '../app/validate.ts';

export async function checkCommand(opts: { config?: string }): Promise<number> {
  try {
    const loaded = loadStartConfig({ configPath: opts.config });
    const warnings: string[] = [];
    const problems = await validateGeneration(loaded, warnings);
    for (const w of warnings) process.stderr.write(`warning: ${w}\n`);
    for (const p of problems) process.stderr.write(`${p}\n`);
    if (problems.length) return 1;
    const n = loaded.config.listeners.length;
    process.stdout.write(`${loaded.file}: OK (${n} listener${n === 1 ? '' : 's'})\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${err instanceof ConfigError ? err.message : String(err)}\n`);
    return 1;
  }
}

/** `postern check`: load and validate everything a start would, report every problem, start nothing. */
import { loadStartConfig } from '../app/postern.ts';
import { ConfigError } from '../config/config-error.ts';
import { validateGeneration } from '../app/validate.ts';

export async function checkCommand(opts: { config?: string }): Promise<number> {
  try {
    const loaded = loadStartConfig({ configPath: opts.config });
    const problems = await validateGeneration(loaded);
    for (const p of problems) process.stderr.write(`${p}\n`);
    if (problems.length) return 1;
    process.stdout.write(`${loaded.file}: OK (${loaded.config.listeners.length} listeners)\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${err instanceof ConfigError ? err.message : String(err)}\n`);
    return 1;
  }
}

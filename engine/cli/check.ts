/**
 * `postern check`: build the generation a start or a reload would build (buildGeneration, the same code),
 * report every problem, start nothing. Stricter in one way only, by the builder's `strict` option: an
 * expired outbound client certificate fails the check, where a reload only logs it.
 */
import { loadStartConfig } from '../app/postern.ts';
import { ConfigError } from '../config/config-error.ts';
import { buildGeneration, GenerationError } from '../generation/build-generation.ts';
import { createLogger } from '../logging/logger.ts';

export async function checkCommand(opts: { config?: string }): Promise<number> {
  try {
    const loaded = loadStartConfig({ configPath: opts.config });
    // What scripts log from their top level is not the check's output.
    const built = await buildGeneration(loaded, { logger: createLogger('silent'), strict: true });
    await built.generation.dispose();
    for (const w of built.warnings) process.stderr.write(`warning: ${w.message}\n`);
    const n = loaded.config.listeners.length;
    const p = loaded.config.policyServices.length;
    process.stdout.write(`${loaded.file}: OK (${n} listener${n === 1 ? '' : 's'}${p ? `, ${p} policy service${p === 1 ? '' : 's'}` : ''})\n`);
    return 0;
  } catch (err) {
    if (err instanceof GenerationError) {
      for (const w of err.warnings) process.stderr.write(`warning: ${w.message}\n`);
      for (const line of err.lines) process.stderr.write(`${line}\n`);
    } else {
      process.stderr.write(`${err instanceof ConfigError ? err.message : String(err)}\n`);
    }
    return 1;
  }
}

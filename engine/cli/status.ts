/** `postern status`: what the running server last wrote to <dataDir>/status.json (generation, reloads, errors). */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadStartConfig } from '../app/postern.ts';

export async function statusCommand(opts: { config?: string }): Promise<number> {
  const { config } = loadStartConfig({ configPath: opts.config });
  const file = join(config.dataDir, 'status.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    process.stderr.write(`${file}: no status (is the server running with this configuration?)\n`);
    return 1;
  }
  const status = JSON.parse(text) as { lastError: string[] | null };
  process.stdout.write(text);
  return status.lastError ? 2 : 0;
}

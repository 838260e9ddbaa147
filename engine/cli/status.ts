/**
 * `postern status`: what the running server last wrote to <dataDir>/status.json (generation, reloads,
 * errors), with the supervisor's <dataDir>/cluster.json under `cluster` (processes, restarts, fenced scripts).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadStartConfig } from '../app/postern.ts';
import { clusterStatusFile } from '../cluster/process-model.ts';

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
  const cluster = await readFile(clusterStatusFile(config.dataDir), 'utf8').then((t) => JSON.parse(t) as unknown, () => null);
  process.stdout.write(cluster ? `${JSON.stringify({ ...status, cluster }, null, 2)}\n` : text);
  return status.lastError ? 2 : 0;
}

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
  const cluster = await readFile(clusterStatusFile(config.dataDir), 'utf8').then((t) => JSON.parse(t) as { pid: number }, () => null);
  if (cluster) Object.assign(cluster, { running: isAlive(cluster.pid) });
  process.stdout.write(cluster ? `${JSON.stringify({ ...status, cluster }, null, 2)}\n` : text);
  return status.lastError ? 2 : 0;
}

/** Whether the supervisor that wrote cluster.json still runs (a stale file after a crash or stop). */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

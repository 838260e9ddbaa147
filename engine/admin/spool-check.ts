/**
 * /readyz's spool check: every spool folder of the data directory can be written — `<dataDir>/spool` (the
 * queue process's bounces, a single process's mail) and, under `postern serve`, each worker's `worker-<n>`.
 */
import { access, constants, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { ReadinessCheck } from './admin-server.ts';

export async function spoolWritable(dataDir: string): Promise<ReadinessCheck> {
  const root = join(dataDir, 'spool');
  try {
    const workers = (await readdir(root, { withFileTypes: true }))
      .filter((d) => d.isDirectory() && d.name.startsWith('worker-')).map((d) => join(root, d.name));
    for (const dir of [root, ...workers]) await access(dir, constants.W_OK);
    return { ok: true };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  }
}

/**
 * `postern status`: asks the running server (the supervisor's status socket in the data directory) for
 * its state: generation, reloads, the last reload error with file:line, pending restarts computed against
 * the listeners actually bound, processes and fences, queue size. Exit 0 when it runs and its last reload
 * succeeded, 2 when that reload was refused, 3 when no server answers. A configuration file with errors
 * does not stop it: the data directory is still found, the errors are printed, the server still answers.
 */
import http from 'node:http';
import { dirname, resolve } from 'node:path';
import { parse } from 'yaml';
import { loadStartConfig } from '../app/postern.ts';
import { readInputFileSync } from '../config/input-file.ts';
import { statusSocket } from '../cluster/process-model.ts';

export const NOT_RUNNING = 3;

export async function statusCommand(opts: { config?: string }): Promise<number> {
  const dataDir = dataDirOf(opts.config);
  const socket = statusSocket(dataDir);
  let status: { lastError?: string[] | null };
  try {
    status = await ask(socket, '/status');
  } catch (err) {
    process.stderr.write(`postern: not running (no server answers on ${socket}: ${(err as Error).message})\n`);
    return NOT_RUNNING;
  }
  process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
  return status.lastError ? 2 : 0;
}

/**
 * The data directory of this configuration. A file the running server would refuse (a reload error) still
 * names it: then only `dataDir` is read from the YAML, and the problems go to stderr.
 */
function dataDirOf(configPath: string | undefined): string {
  // Regular files only: a FIFO in its place (the very fault status must show) would block the read for ever.
  try {
    return loadStartConfig({ configPath, regularFileOnly: true }).config.dataDir;
  } catch (err) {
    process.stderr.write(`postern: the configuration has errors (a running server keeps its last good one):\n${(err as Error).message}\n`);
    if (!configPath) return resolve('data');
    let dataDir: unknown;
    try {
      dataDir = (parse(readInputFileSync(configPath).toString('utf8')) as { dataDir?: unknown } | null)?.dataDir;
    } catch { /* not even YAML: the default */ }
    return resolve(dirname(configPath), typeof dataDir === 'string' ? dataDir : './data');
  }
}

function ask<T>(socketPath: string, path: string): Promise<T> {
  return new Promise((resolvePromise, reject) => {
    const req = http.get({ socketPath, path, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => { body += d; });
      res.on('end', () => {
        try { resolvePromise(JSON.parse(body) as T); } catch (err) { reject(err as Error); }
      });
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', reject);
  });
}

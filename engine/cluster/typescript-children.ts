/**
 * Child processes and threads run the same TypeScript as this process. In a clone Node strips the types
 * itself; in an installed package (under node_modules/, where Node does not) bin/run-typescript.js
 * registers a load hook and names itself in POSTERN_TS_HOOK. Hooks are per thread and per process, so
 * each child and thread registers it again before it loads any .ts file.
 */
import { pathToFileURL } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

const hook = (): string | undefined => process.env.POSTERN_TS_HOOK || undefined;

/** execArgv for fork(): this process's, plus the hook when there is one. */
export function childExecArgv(): string[] {
  const h = hook();
  return h ? [...process.execArgv, '--import', pathToFileURL(h).href] : process.execArgv;
}

/** A worker thread running the TypeScript module at `url`. */
export function typescriptWorker(url: URL, options: WorkerOptions): Worker {
  const h = hook();
  if (!h) return new Worker(url, options);
  const source = `import(${JSON.stringify(pathToFileURL(h).href)}).then(() => import(${JSON.stringify(url.href)}))`;
  return new Worker(source, { ...options, eval: true });
}

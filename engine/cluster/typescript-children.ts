/**
 * Child processes and threads run the same TypeScript as this process. In a clone Node strips the types
 * itself; in an installed package (under node_modules/, where Node does not) bin/run-typescript.js
 * registers a load hook and names itself in POSTERN_TS_HOOK. Hooks are per thread and per process, so
 * each child and thread registers it again before it loads any .ts file.
 */
import { pathToFileURL } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

const hook = (): string | undefined => process.env.POSTERN_TS_HOOK || undefined;

/**
 * V8's collection of dead WebAssembly code, off from a child's first instruction: set later (when the
 * sandbox loads) it cannot stop a collection that the stripping of the child's own modules already started
 * (why it must be off: engine/sandbox/no-wasm-code-gc.ts).
 */
const NO_WASM_CODE_GC = '--no-wasm-code-gc';

/**
 * SIGUSR1 (what log rotation setups send) would otherwise open Node's inspector on 127.0.0.1:9229 in the
 * child, from its first instruction: any local user could then run code in it.
 */
const NO_SIGUSR1_INSPECTOR = '--disable-sigusr1';

/** execArgv for fork(): this process's, plus the hook when there is one. */
export function childExecArgv(): string[] {
  const h = hook();
  const own = [...process.execArgv];
  for (const flag of [NO_WASM_CODE_GC, NO_SIGUSR1_INSPECTOR]) if (!own.includes(flag)) own.push(flag);
  return h ? [...own, '--import', pathToFileURL(h).href] : own;
}

/** A worker thread running the TypeScript module at `url`. */
export function typescriptWorker(url: URL, options: WorkerOptions): Worker {
  const h = hook();
  if (!h) return new Worker(url, options);
  const source = `import(${JSON.stringify(pathToFileURL(h).href)}).then(() => import(${JSON.stringify(url.href)}))`;
  return new Worker(source, { ...options, eval: true });
}

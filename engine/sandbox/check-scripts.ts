/**
 * Offline validation for `postern check`: compile every script as the sandbox would, report every
 * problem, keep nothing running.
 */
import type { ScriptError } from './errors.ts';
import { ScriptErrors } from './errors.ts';
import type { HostBridge } from './host-callbacks.ts';
import { IsolateSlot, teardownGrace } from './isolate-slot.ts';
import { loadScriptDirectory } from './load-scripts.ts';
import type { ScriptSource } from './script-source.ts';

export interface CheckOptions {
  timeoutMs?: number;
  memoryLimitMb?: number;
  /** Serves lookups and logs made by top-level code; by default lookups find nothing and logs are dropped. */
  host?: HostBridge;
}

const quietHost: HostBridge = { lookup: () => null, log: () => {} };

/** Every ScriptError in `scripts` (empty when all are fine). */
export async function checkScripts(scripts: readonly ScriptSource[], options: CheckOptions = {}): Promise<ScriptError[]> {
  if (scripts.length === 0) return [];
  const { slot, errors } = await IsolateSlot.build(scripts, {
    timeoutMs: options.timeoutMs ?? 100,
    memoryLimitMb: options.memoryLimitMb ?? 32,
    host: options.host ?? quietHost,
  }, true);
  await slot?.dispose();
  await teardownGrace(); // `postern check` exits right after: let isolated-vm finish first
  return errors;
}

/** Load and check a scripts folder: the union of loading problems and compile problems. */
export async function checkScriptDirectory(dir: string, options: CheckOptions = {}): Promise<ScriptError[]> {
  try {
    return await checkScripts(await loadScriptDirectory(dir), options);
  } catch (e) {
    if (e instanceof ScriptErrors) return e.errors;
    throw e;
  }
}

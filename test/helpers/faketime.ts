/**
 * A server whose wall clock a test moves while it runs (libfaketime: an NTP step, a VM restored from a
 * snapshot); the monotonic clock is left alone, as a real step leaves it.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from './cluster.ts';

export const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';

/** False when libfaketime is installed, else why a test that needs it is skipped. */
export const needsFaketime: string | false = existsSync(LIBFAKETIME) ? false : `libfaketime is not installed (${LIBFAKETIME}; test/setup-system.sh installs it)`;

/** Environment that runs a process with its wall clock `offset` (libfaketime syntax, `-3600`) from the real one. */
export function fakeClock(offset: string): Record<string, string> {
  return { LD_PRELOAD: LIBFAKETIME, FAKETIME: offset, FAKETIME_NO_CACHE: '1', FAKETIME_DONT_FAKE_MONOTONIC: '1' };
}

export interface SteppableCluster {
  c: ClusterProcess;
  /** Set the server's wall clock to the real one plus `offset` (`+3600`, `-86400`). */
  step(offset: string): void;
  close(): Promise<void>;
}

/** `postern serve` whose wall clock is the real one plus what `step()` sets; `env`: more environment. */
export async function startSteppableCluster(config: string, opts: { files?: Record<string, string>; scripts?: Record<string, string>; dataDir?: string; env?: Record<string, string> } = {}): Promise<SteppableCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-clock-'));
  const offsetFile = join(dir, 'offset');
  writeFileSync(offsetFile, '+0\n');
  const c = await startCluster({
    config,
    ...opts,
    env: { ...opts.env, LD_PRELOAD: LIBFAKETIME, FAKETIME_TIMESTAMP_FILE: offsetFile, FAKETIME_NO_CACHE: '1', FAKETIME_DONT_FAKE_MONOTONIC: '1' },
  });
  return {
    c,
    step: (offset) => writeFileSync(offsetFile, `${offset}\n`),
    async close() {
      await c.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A sandbox for the length of one test: created, handed to the test, and disposed whatever the test did —
 * and torn down before the test ends: a test process that exits (--test-force-exit) while isolated-vm
 * still tears an isolate down dies of SIGSEGV, and its file fails with every test passed.
 */
import { Sandbox, type SandboxOptions } from '../../engine/sandbox/index.ts';

export async function withSandbox<T>(options: SandboxOptions, fn: (sandbox: Sandbox) => Promise<T>): Promise<T> {
  // isolated-vm's work on its threads does not keep the event loop alive: a test waiting only for it (a build, a
  // call spinning on an isolate thread) let the process exit there on a loaded machine, its remaining tests never
  // run and the file reported as passed. A server always has its listening sockets.
  const alive = setInterval(() => undefined, 60_000);
  try {
    const sandbox = await Sandbox.create(options);
    try {
      return await fn(sandbox);
    } finally {
      await sandbox.dispose();
    }
  } finally {
    clearInterval(alive);
  }
}

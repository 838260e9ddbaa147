/** A sandbox for the length of one test: created, handed to the test, and disposed whatever the test did. */
import { after } from 'node:test';
import { Sandbox, type SandboxOptions } from '../../engine/sandbox/index.ts';

// isolated-vm deletes disposed isolates later, on its threads: a file's process (ended by --test-force-exit)
// waits for the last teardown, else it may crash on its way out (SIGSEGV after every test of a file passed).
let lastTeardown: Promise<void> = Promise.resolve();
after(() => lastTeardown);

export async function withSandbox<T>(options: SandboxOptions, fn: (sandbox: Sandbox) => Promise<T>): Promise<T> {
  const sandbox = await Sandbox.create(options);
  try {
    return await fn(sandbox);
  } finally {
    lastTeardown = sandbox.dispose();
  }
}

/** A sandbox for the length of one test: created, handed to the test, and disposed whatever the test did. */
import { Sandbox, type SandboxOptions } from '../../engine/sandbox/index.ts';

export async function withSandbox<T>(options: SandboxOptions, fn: (sandbox: Sandbox) => Promise<T>): Promise<T> {
  const sandbox = await Sandbox.create(options);
  try {
    return await fn(sandbox);
  } finally {
    sandbox.dispose();
  }
}

/**
 * A command's own function (engine/cli/*.ts: checkCommand, pkiRevokeCommand, …) run in this process, what it
 * prints captured: for the variants of a case whose first run is the real command line (runCli), where a new
 * process per variant (~0.4 s of CPU each, mostly module loading) proves nothing more.
 */
import type { CliResult } from './cli.ts';

type Write = typeof process.stdout.write;

export async function runInProcess(command: () => Promise<number>): Promise<CliResult> {
  const captured = { stdout: '', stderr: '' };
  const restore: Array<() => void> = [];
  for (const name of ['stdout', 'stderr'] as const) {
    const stream = process[name];
    const own = Object.prototype.hasOwnProperty.call(stream, 'write');
    const write = stream.write;
    // Only text: the test runner's own reports to its parent go through stdout too, as Buffers (v8 serialized).
    stream.write = function (this: NodeJS.WriteStream, chunk: unknown, ...rest: unknown[]): boolean {
      if (typeof chunk !== 'string') return (write as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
      captured[name] += chunk;
      const done = rest.find((r) => typeof r === 'function') as (() => void) | undefined;
      if (done) queueMicrotask(done);
      return true;
    } as Write;
    restore.push(() => { if (own) stream.write = write; else delete (stream as Partial<NodeJS.WriteStream>).write; });
  }
  try {
    const code = await command();
    return { code, signal: null, ...captured };
  } finally {
    for (const r of restore) r();
  }
}

/**
 * Loaded first into every test process by test/run.ts (--import) when POSTERN_TEST_STRIPPED names a folder: a test
 * file (*.test.ts) is loaded from the copy with its types stripped that the runner made there before the run, keyed
 * by its content's hash. Each test file is new to the shared compile cache, so each of the run's ~600 processes
 * loaded Node's TypeScript stripper (amaro, a WebAssembly build of swc) to strip its one file: ~0.07 s of CPU a
 * file (five runs of a small file with its helpers compiled already: 2.0 and 2.4 s without, 1.7 and 2.0 s with),
 * some 40 s of a CPU-bound run. The runner strips them all in its own process (it has the stripper
 * loaded already, to run itself), in under a second. A file with no copy (changed since) is stripped as before.
 */
import { registerHooks } from 'node:module';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';

const dir = process.env.POSTERN_TEST_STRIPPED;

/** The name of a test file's stripped copy: its content's hash, so that an edited file never gets a stale copy. */
export function strippedName(source: Buffer | string): string {
  return `${createHash('sha256').update(source).digest('hex')}.js`;
}

if (dir) {
  registerHooks({
    load(url, context, nextLoad) {
      if (!url.startsWith('file:') || !url.endsWith('.test.ts')) return nextLoad(url, context);
      let source: string;
      try {
        source = readFileSync(join(dir, strippedName(readFileSync(new URL(url))))).toString('utf8');
      } catch {
        return nextLoad(url, context);
      }
      // As Node's own stripping does: debuggers and stack traces name the TypeScript file.
      return { format: 'module', source: `${source}\n\n//# sourceURL=${url}`, shortCircuit: true };
    },
  });
}

/**
 * A server without inotify: test/helpers/no-inotify.c built into a preload library (gcc, installed by
 * test/setup-system.sh). Every inotify instance it asks for is refused with EMFILE, as on a host where
 * fs.inotify.max_user_instances is used up; the test's own processes and other tests are not touched.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SOURCE = new URL('./no-inotify.c', import.meta.url).pathname;

/** Environment for the server: the library preloaded. */
export function withoutInotify(): Record<string, string> {
  const library = join(mkdtempSync(join(tmpdir(), 'postern-no-inotify-')), 'no-inotify.so');
  execFileSync('gcc', ['-shared', '-fPIC', '-O2', '-o', library, SOURCE]);
  return { LD_PRELOAD: library };
}

/**
 * Loaded into every test process by test/run.ts (--import). A test that leaves an isolate abandoned while its
 * script ran (a deadline test, or any call that a loaded machine let run past its deadline) may have parked an
 * isolated-vm thread for good, and process.exit() then waits for that thread for ever (or crashes in teardown):
 * the file's process never ends and the whole run hangs until its limit. Such a process ends as the CLI does
 * (engine/cli/main.ts): execve() into `sh -c 'exit N'`, same pid and exit code, without the teardown. Its
 * results have been written by then (stdout to the runner is a pipe, written synchronously on Linux).
 */
import { exitMayHang } from '../../engine/sandbox/unrecoverable.ts';

let always = false;

/**
 * For a test file whose own raw isolates (not the sandbox's) were disposed under a running script by their memory
 * limit: V8's teardown then sometimes crashes (SIGSEGV) after every test passed.
 */
export function exitWithoutTeardown(): void {
  always = true;
}

process.on('exit', (code) => {
  if (!always && !exitMayHang()) return;
  try {
    process.execve?.('/bin/sh', ['sh', '-c', `exit ${Math.trunc(code)}`]);
  } catch { /* not available here: process.exit() goes on, and may hang as before */ }
});

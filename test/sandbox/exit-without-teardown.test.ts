/**
 * A test process in which an isolated-vm thread was parked for good (a script stuck in a builtin, or a call a
 * loaded machine let run past its deadline) used to hang in process.exit() after its tests had passed, and with
 * it the whole `npm test` run until its limit. test/run.ts loads test/helpers/exit-without-teardown.ts into
 * every test process: such a process ends with its own exit code, without the teardown.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closed } from '../helpers/wait.ts';

/** This process's environment, without what marks it as a test file's process (a nested runner would act as one). */
function runnerEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_NO_WARNINGS: '1' };
  delete env.NODE_TEST_CONTEXT;
  return env;
}

test('a test file that parked an isolate thread still ends, with its result', async () => {
  const child = spawn(process.execPath, [
    '--test', '--test-force-exit', '--test-reporter=tap', '--import', './test/helpers/exit-without-teardown.ts',
    'test/sandbox/helpers/parked-thread-file.ts',
  ], { env: runnerEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString(); });
  child.stderr.on('data', (chunk: Buffer) => { out += chunk.toString(); });
  // A guard only: the file takes about 5 s (isolated-vm parks the thread 5 s after the time limit); a hung exit never ends.
  const guard = setTimeout(() => child.kill('SIGKILL'), 90_000);
  await closed(child);
  clearTimeout(guard);
  assert.equal(child.signalCode, null, `the test file's process hung at exit and was killed:\n${out}`);
  assert.equal(child.exitCode, 0, out);
  assert.match(out, /^# pass 1$/m);
  assert.match(out, /^# fail 0$/m);
});

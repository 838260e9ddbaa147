/**
 * Run by exit-without-teardown.test.ts as a test file of its own (node --test): a script stuck in a V8 builtin
 * parks an isolated-vm thread for good, after which process.exit() waits for it for ever.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, onUnrecoverable } from '../../../engine/sandbox/index.ts';
import { js, recordingHost } from '../../helpers/sandbox-fixtures.ts';

test('a call stuck in a builtin parks its thread', async () => {
  const unrecoverable = new Promise<string>((resolve) => onUnrecoverable(resolve));
  const sandbox = await Sandbox.create({
    host: recordingHost(), isolates: 1, timeoutMs: 200, fastPathMs: 0,
    scripts: [js('rcptto', 'export default function () { Array(2 ** 32 - 1).lastIndexOf(1); }')],
  });
  await assert.rejects(sandbox.invoke('rcptto', {}, 'c1'));
  assert.match(await unrecoverable, /catastrophically/);
});

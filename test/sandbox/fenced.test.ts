/**
 * A fenced script (the supervisor's fence, engine/cluster/fence-book.ts) is not run: its calls fail closed
 * with their own kind, `fenced`, counted apart from scripts that failed while running, so monitoring can
 * tell "a script is fenced" from "a script is failing". A changed source (another SHA-256) is not fenced.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure, runningCall } from '../../engine/sandbox/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

test('a fenced script is not run: its calls fail with kind fenced, counted apart; lifted, it runs again', async () => {
  const script = js('rcptto', "let runs = 0; export default function () { runs++; return reject('ran ' + runs); }");
  await withSandbox({ host: recordingHost(), scripts: [script], isolates: 1 }, async (sandbox) => {
    runningCall.setFenced([{ hook: 'rcptto', file: script.file, sha256: runningCall.hash(script.source) }]);
    try {
      await assert.rejects(sandbox.invoke('rcptto', {}, 'c1'), (e: unknown) => {
        assert.ok(e instanceof ScriptFailure);
        assert.equal(e.kind, 'fenced');
        assert.match(String(e), /fenced: this script made its worker process crash or hang repeatedly/);
        return true;
      });
      assert.deepEqual((await sandbox.stats()).failures, { error: 0, timeout: 0, memory: 0, fenced: 1 });
    } finally {
      runningCall.setFenced([]);
    }
    // Lifted: the script runs, and had not run while fenced.
    assert.deepEqual(await sandbox.invoke('rcptto', {}, 'c2'), { verdict: 'reject', text: 'ran 1' });
  });
});

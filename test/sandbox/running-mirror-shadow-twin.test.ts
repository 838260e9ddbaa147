// A worker that dies while the same script runs both live (one listener's scripts) and as a shadow script (another
// listener's shadowScripts, the same folder): the mirror the supervisor reads must name both runs. Fences and crash
// counts keep them apart (running-call.ts fenceKey), but the mirror merged them by hook, file and content, so the
// crash record kept one of the two: the shadow run's crash counted against the live copy (towards its fence, which
// ends its listener's replies in 451), and the shadow script, fenced at its first crash, kept crashing workers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runningCall, readMirror, removeMirror } from '../../engine/sandbox/index.ts';
import { hookBit } from '../../engine/sandbox/running-call.ts';

test('the mirror names a script running live and the same script running as a shadow, each once', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-mirror-twin-'));
  const mirror = join(dir, 'running-1');
  runningCall.mirrorTo(mirror);
  const scripts = [{ hook: 'rcptto' as const, file: join(dir, 'rcptto.js'), source: 'export default () => accept();' }];
  const live = runningCall.register(scripts);
  const shadow = runningCall.register(scripts, true);
  // Both in flight on isolate threads, as when the worker dies (what Sandbox.invoke marks around a call).
  const slots = [runningCall.enterAsync(live, hookBit('rcptto')), runningCall.enterAsync(shadow, hookBit('rcptto'))];
  try {
    const named = readMirror(mirror).map((s) => `${s.hook}:${s.shadow === true ? 'shadow' : 'live'}`).sort();
    assert.deepEqual(named, ['rcptto:live', 'rcptto:shadow']);
  } finally {
    for (const s of slots) runningCall.exitAsync(s);
    runningCall.unregister(live);
    runningCall.unregister(shadow);
    removeMirror(mirror);
    await rm(dir, { recursive: true, force: true });
  }
});

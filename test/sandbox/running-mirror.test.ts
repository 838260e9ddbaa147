// The running-call mirror: the file a worker process leaves for the supervisor names the scripts running
// at the moment the process died (on the event-loop thread and on isolate threads), and none once they
// returned — so a crash between calls is blamed on no script.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runningCall, readMirror, removeMirror, StallMirror } from '../../engine/sandbox/index.ts';
import { js } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

test('the mirror names the scripts running now, on the event-loop thread and on isolate threads, and none after', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-mirror-'));
  const mirror = join(dir, 'running-1');
  runningCall.mirrorTo(mirror);
  const seen: Array<Array<string>> = [];
  const names = (): string[] => readMirror(mirror).map((s) => `${s.hook}:${s.file.split('/').pop()}`).sort();
  try {
    // lookup() runs on the host while the script is inside its call: what would the supervisor read now?
    const host = { lookup: (_t: string, key: string) => { seen.push(names()); return key; }, log: () => {} };
    const scripts = [
      js('mailfrom', 'export default (ctx) => { lookup("t", ctx.k); return accept(); }'),
      js('rcptto', 'export default (ctx) => { lookup("t", ctx.k); }'),
    ];
    await withSandbox({ host, fastPathMs: 1000, timeoutMs: 5000, scripts }, async (sandbox) => {
      assert.deepEqual(names(), [], 'nothing running before the first call');
      await sandbox.invoke('mailfrom', { k: '1' }, 'c1'); // the fast path: the event-loop thread's word
      assert.deepEqual(seen.pop(), ['mailfrom:mailfrom.js']);
      assert.deepEqual(names(), [], 'nothing running after it');
    });
    await withSandbox({ host, fastPathMs: 0, timeoutMs: 5000, isolates: 2, scripts }, async (sandbox) => {
      await sandbox.invoke('rcptto', { k: '2' }, 'c2'); // on an isolate thread: a word of its own
      assert.equal(runningCall.current(), 0, 'not the event-loop marker');
      assert.deepEqual(seen.pop(), ['rcptto:rcptto.js']);
      // Two at once, on two isolates: each is named while it runs, whatever the other does.
      await Promise.all([sandbox.invoke('rcptto', { k: '3' }, 'c3'), sandbox.invoke('mailfrom', { k: '4' }, 'c4')]);
      assert.equal(seen.length, 2);
      assert.ok(seen.some((n) => n.includes('rcptto:rcptto.js')) && seen.some((n) => n.includes('mailfrom:mailfrom.js')), JSON.stringify(seen));
      assert.deepEqual(names(), [], 'nothing running after the isolate-thread calls');
    });
    removeMirror(mirror);
    assert.equal(existsSync(`${mirror}.bin`), false);
    assert.deepEqual(readMirror(mirror), [], 'no mirror: nothing to blame');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

// A batch mixes hooks; the mirror holds the batch's hooks, and only the watchdog's copy of the call running now
// (StallMirror, written during a stall) narrows them: a worker the supervisor killed before its watchdog named the
// call (seen under load in test/cluster/fence.test.ts) blamed the bystander hook batched with the one that hung.
test('a stall copied into the mirror names the call running now, not the other hooks of its batch', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-mirror-'));
  const mirror = join(dir, 'running-2');
  runningCall.mirrorTo(mirror);
  const stall = new StallMirror(mirror, runningCall.buffer);
  const names = (): string[] => readMirror(mirror).map((s) => s.hook).sort();
  const seen: Record<string, { batch: string[]; stalled: string[]; resumed: string[] }> = {};
  try {
    const host = {
      lookup: (_t: string, key: string) => {
        const batch = names();
        stall.stalled();
        const stalled = names();
        stall.resumed();
        seen[key] = { batch, stalled, resumed: names() };
        return key;
      },
      log: () => {},
    };
    const scripts = [
      js('helo', 'export default (ctx) => { lookup("t", ctx.k); }'),
      js('rcptto', 'export default (ctx) => { lookup("t", ctx.k); }'),
    ];
    await withSandbox({ host, fastPathMs: 1000, timeoutMs: 5000, scripts }, async (sandbox) => {
      // Called in one turn: one entry runs both.
      await Promise.all([sandbox.invoke('helo', { k: 'h' }, 'c1'), sandbox.invoke('rcptto', { k: 'r' }, 'c2')]);
    });
    assert.deepEqual(seen.r!.batch, ['helo', 'rcptto'], 'one entry ran both calls (the mirror alone names the batch)');
    assert.deepEqual(seen.h!.stalled, ['helo']);
    assert.deepEqual(seen.r!.stalled, ['rcptto']);
    assert.deepEqual(seen.r!.resumed, ['helo', 'rcptto'], 'cleared when the event loop beats again');
  } finally {
    removeMirror(mirror);
    await rm(dir, { recursive: true, force: true });
  }
});

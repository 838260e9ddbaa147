// A reload's build is bounded by buildDeadlineMs(): 5 s plus every top level of every isolate at its time limit.
// That product of configured values passed a timer's reach (2^31-1 ms) with sandbox.timeoutMs at its largest
// (or a long one with 64 isolates and several scripts folders): Node ran the timer after 1 ms, and every reload
// was refused as timed out, the edit never in force. The warning Node gives for such a timer is counted (it is
// emitted when the timer is set, no timing involved); the reply shows whether the edit is in force.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { MX_WITH_TABLE_CONFIG, mailFromReply, verdictScript } from './helpers.ts';

test('sandbox.timeoutMs 2147483647: a reload is built and in force, no timer overflows', async () => {
  const overflows: string[] = [];
  const onWarning = (w: Error): void => { if (w.name === 'TimeoutOverflowWarning') overflows.push(w.message); };
  process.on('warning', onWarning);
  const s = await startTestServer({
    config: `${MX_WITH_TABLE_CONFIG}sandbox: { timeoutMs: 2147483647 }\n`,
    files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') },
  });
  try {
    assert.equal(await mailFromReply(s), '550 5.7.1 v0');
    await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), verdictScript('v1'));
    const outcome = await s.reloader.reload('test');
    assert.deepEqual([outcome.ok, outcome.errors], [true, []]);
    assert.equal(await mailFromReply(s), '550 5.7.1 v1');
  } finally {
    process.off('warning', onWarning);
    await s.stop();
  }
  assert.deepEqual(overflows, []);
});

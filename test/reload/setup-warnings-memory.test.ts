// When a setup warning is said (engine/reload/setup-warnings.ts), on a clock the test moves: new or changed at once,
// unchanged not again until a day after it was last said, gone and back again at once, each once however often given.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { REPEAT_AFTER_MS, SetupWarnings } from '../../engine/reload/setup-warnings.ts';

test('said when new or changed, again a day after it was last said while it holds, and at once when it comes back', () => {
  let now = 1000;
  const w = new SetupWarnings(() => now);
  const expiring = (days: number) => ({ listener: 'mx', message: `tls/server.crt: expires in ${days} days` });
  const stray = { message: 'scripts/helper.ts: not a hook\'s script, so it never runs' };
  assert.deepEqual(w.took([expiring(14), stray, stray]), [expiring(14), stray]);
  assert.deepEqual(w.inForce, [expiring(14), stray]);
  now += 3600_000;
  assert.deepEqual(w.took([expiring(14), stray]), [], 'an hour later: nothing new');
  assert.deepEqual(w.took([expiring(13), stray]), [expiring(13)], 'its facts changed');
  assert.deepEqual(w.took([{ ...stray, listener: 'submission' }, expiring(13)]), [{ ...stray, listener: 'submission' }], 'another listener: another warning');
  assert.deepEqual(w.took([expiring(13)]), []);
  now += 3600_000;
  assert.deepEqual(w.took([expiring(13), stray]), [stray], 'gone and back');
  now += REPEAT_AFTER_MS - 3600_000 - 1;
  assert.deepEqual(w.took([expiring(13), stray]), [], 'not yet a day');
  now += 1;
  assert.deepEqual(w.took([expiring(13), stray]), [expiring(13)], 'a day after it was said');
  now += 3600_000;
  assert.deepEqual(w.took([expiring(13), stray]), [stray], 'a day after it was said (an hour later)');
});

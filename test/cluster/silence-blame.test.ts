/**
 * When the supervisor's kill for a silence is blamed on the call its event loop was running (silence-blame.ts), and
 * the main thread's own CPU time the silence clock keeps for that decision.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { silenceBlamesEventLoop } from '../../engine/cluster/silence-blame.ts';
import { SilenceClock } from '../../engine/cluster/silence-clock.ts';
import { HANG_MS, SUPERVISOR_HANG_MS } from '../../engine/cluster/process-model.ts';

test('a silence is blamed on the event loop\'s call when the thread ran for a limit, never when it was held still', () => {
  const cases: Array<[string, { heldStill: boolean; ranMs: number; mainRanMs: number | null }, boolean]> = [
    ['killed at the supervisor\'s limit, on a CPU all along', { heldStill: false, ranMs: SUPERVISOR_HANG_MS, mainRanMs: SUPERVISOR_HANG_MS }, true],
    // The case seen under load 25: killed at the wall-clock bound, the stuck thread having run a share of a CPU.
    ['killed at the wall-clock bound after the main thread ran 2.4 s', { heldStill: false, ranMs: 2400, mainRanMs: 2400 }, true],
    ['killed at the wall-clock bound after the main thread ran the watchdog\'s limit', { heldStill: false, ranMs: HANG_MS, mainRanMs: HANG_MS }, true],
    // Starved: the thread hardly ran, whatever was running on it is a bystander.
    ['killed at the wall-clock bound, the main thread starved of CPU', { heldStill: false, ranMs: 300, mainRanMs: 120 }, false],
    ['no reading of the main thread, the silence counted short of the limit', { heldStill: false, ranMs: 2000, mainRanMs: null }, false],
    ['held still (SIGSTOP, a debugger)', { heldStill: true, ranMs: 30_000, mainRanMs: 30_000 }, false],
  ];
  for (const [what, silenced, blamed] of cases) assert.equal(silenceBlamesEventLoop(silenced), blamed, what);
});

/** This thread's time on a CPU so far (ms). */
function ranMs(): number {
  return Number(readFileSync(`/proc/${process.pid}/task/${process.pid}/schedstat`, 'latin1').split(' ')[0]) / 1e6;
}

test('the silence clock keeps the main thread\'s own time on a CPU since its reset, whatever the wall clock did', () => {
  const clock = new SilenceClock(process.pid);
  clock.reset(performance.now());
  assert.equal(clock.mainRanMs, null, 'nothing known before two looks');
  clock.look(performance.now());
  const from = ranMs();
  while (ranMs() - from < 200); // busy on this thread: its own CPU time grows
  clock.look(performance.now());
  const spun = ranMs() - from;
  assert.ok(clock.mainRanMs !== null && clock.mainRanMs >= 200 && clock.mainRanMs <= spun + 50, `counted ${clock.mainRanMs} ms of ${spun} ms spun`);
  clock.reset(performance.now());
  assert.equal(clock.mainRanMs, null, 'a reset starts over');
});

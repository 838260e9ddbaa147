/**
 * A hook whose calls keep outrunning the fast path goes straight to isolate threads for SLOW_HOOK_MS (60 s),
 * then gets the fast path back. That minute was timed on the wall clock: set back a day (NTP step, a VM
 * restored from a snapshot) after a hook was moved, the hook stayed off the fast path for that day, each of
 * its calls paying the isolate-thread hand-over (about ten times the call itself).
 * The server's period is shortened to SLOW_MS (POSTERN_SLOW_HOOK_MS): the fault is the day, not the minute, and a
 * real minute idle was the longest wait of the whole suite. Nothing here has to happen within the period, so a
 * short one cannot make the test depend on the machine's speed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ONE_WORKER, greeted, type ClusterProcess } from '../helpers/cluster.ts';
import { needsFaketime, startSteppableCluster } from '../helpers/faketime.ts';

/** The server's slow period (the product's is a minute). */
const SLOW_MS = 3000;

/** Spins on CPU well past the 5 ms fast path (the loop, not the clock). */
const SLOW_RCPT = 'export default () => { let x = 0; for (let i = 0; i < 1e7; i++) x += i; return accept(); }\n';

const movedLines = (c: ClusterProcess): number => c.logs.filter((l) => /rcptto calls go straight to an isolate thread/.test(String(l.msg))).length;

/** RCPTs on one connection until the hook has been moved off the fast path `times` times in all. */
async function untilMoved(c: ClusterProcess, times: number): Promise<void> {
  const client = await greeted(c);
  try {
    assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
    for (let i = 0; movedLines(c) < times; i++) {
      assert.ok(i < 50, `the hook was moved off the fast path ${movedLines(c)} times, not ${times}`);
      const r = await client.command(`RCPT TO:<r${i}@example.test>`, 30_000);
      assert.equal(r.code, 250, r.text);
    }
  } finally {
    client.destroy();
  }
}

test('the wall clock set back a day: a hook moved off the fast path gets it back after its slow period of real time', { skip: needsFaketime, timeout: 240_000 }, async () => {
  const s = await startSteppableCluster(`${ONE_WORKER}sandbox: { timeoutMs: 5000 }\n`, { scripts: { 'rcptto.js': SLOW_RCPT }, env: { POSTERN_SLOW_HOOK_MS: String(SLOW_MS) } });
  try {
    await untilMoved(s.c, 1);
    assert.ok(s.c.logs.some((l) => String(l.msg).endsWith(`for the next ${SLOW_MS / 1000} s`)), 'the server took the shortened period');
    s.step('-86400');
    // The slow period and a little more, of real time: the length of the fault, not a timing assertion.
    await new Promise((r) => setTimeout(r, SLOW_MS + 2000));
    // Back on the fast path, its calls overrun it again and it is moved again; kept off, they never could.
    await untilMoved(s.c, 2);
  } finally {
    await s.close();
  }
});

// The one order in which full servers close connections for new ones (admin and account listeners, policy
// services, SMTP listeners): silent first, then under way, then idle; within a rank the longest without progress.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { firstToClose, type Standing } from '../../engine/connection-limits/closing-order.ts';

const at = (progress: number, advanced: boolean, sentAnything: boolean): Standing => ({ progress, advanced, sentAnything });

test('silent before under way before idle; the stalest within a rank; the unclosable never', () => {
  const standings = new Map<string, Standing | null>([
    ['idle-old', at(1, true, true)],
    ['underway-new', at(9, false, true)],
    ['silent-new', at(8, false, false)],
    ['silent-newest', at(10, false, false)],
    ['busy', null],
  ]);
  const order: string[] = [];
  for (;;) {
    const next = firstToClose(standings.keys(), (k) => standings.get(k) ?? null);
    if (next === null) break;
    order.push(next);
    standings.delete(next);
  }
  assert.deepEqual(order, ['silent-new', 'silent-newest', 'underway-new', 'idle-old']);
  assert.ok(standings.has('busy'));
});

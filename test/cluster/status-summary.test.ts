// The first line of `postern status` (its `summary`): each fact an on-call needs, in words.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statusSummary } from '../../engine/cluster/status-summary.ts';

const ready = (role: string, index: number, restarts = 0): { role: string; index: number; ready: boolean; restarts: number } => ({ role, index, ready: true, restarts });

test('all well, then every kind of trouble named', () => {
  assert.equal(statusSummary({
    processes: [ready('worker', 0), ready('worker', 1), ready('queue', 0)], fences: [], lastError: null, pendingRestart: [],
    queue: { messages: 0, held: 0, oldestAgeSeconds: 0 },
  }), '2/2 workers ready, 0 restarts; no fenced script; last reload ok; queue 0');
  assert.equal(statusSummary({
    processes: [ready('worker', 0, 3), { ...ready('worker', 1), ready: false }, { ...ready('queue', 0, 1), ready: false }],
    fences: [{ hook: 'rcptto', file: 'scripts/rcptto.ts' }],
    lastError: ['postern.yaml:3:1: bad key', 'more'], pendingRestart: ['listener in moves from 127.0.0.1:25 to 127.0.0.1:26'],
    queue: { messages: 12, held: 2, oldestAgeSeconds: 5400 },
  }), '1/2 workers ready (not ready: worker 1, queue 0), 4 restarts; FENCED: live rcptto (scripts/rcptto.ts); '
    + 'LAST RELOAD REFUSED: postern.yaml:3:1: bad key; restart pending: listener in moves from 127.0.0.1:25 to 127.0.0.1:26; queue 12 (2 held), oldest 90 min');
  assert.match(statusSummary({ processes: [], fences: [], lastError: null, pendingRestart: [], queue: { messages: 3, held: 3, oldestAgeSeconds: 0 } }), /; queue 3 \(3 held\)$/);
  assert.match(statusSummary({ processes: [], fences: [], lastError: null, pendingRestart: [], queue: { error: 'EACCES' } }), /; queue unreadable: EACCES$/);
});

// Which worker gets a new SMTP connection (`workerChoice: fill`, the default): the first one that is not
// busy; the next only when the first is busy and the machine has a core to spare, or when the first stops
// beating (hung). The rule itself on figures (a real `postern serve` with two workers: workers-accept.test.ts, on the
// server of its own test of fill at light load).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseWorker, cpuSample, spareCores, FILL_UP_TO, NEW_CONNECTION_LOAD, ON_CPU_TO_SATURATE, SATURATED, SPARE_TO_SPREAD } from '../../engine/cluster/worker-choice.ts';

const idle = { elu: 0.01, cpu: 0.01, fresh: 0 };
const busy = { elu: 0.9, cpu: 0.85, fresh: 0 };

test('fill: the first worker that is not busy; a busy one is passed over only with a core to spare', () => {
  assert.equal(chooseWorker([idle, idle], 2), 0);
  assert.equal(chooseWorker([{ elu: FILL_UP_TO - 0.01, cpu: FILL_UP_TO - 0.01, fresh: 0 }, idle], 2), 0, 'under the mark: still the first');
  assert.equal(chooseWorker([busy, idle], 2), 1, 'busy, and a core to spare: the next');
  assert.equal(chooseWorker([busy, idle], SPARE_TO_SPREAD - 0.1), 0, 'busy, but no core to spare: it stays');
  assert.equal(chooseWorker([busy, idle], 0.6), 0, 'busy, with 0.6 of a core idle: it stays (a second worker there cost more per message and served less)');
  const saturated = { elu: SATURATED, cpu: ON_CPU_TO_SATURATE, fresh: 0 };
  assert.equal(chooseWorker([saturated, idle], 0), 1, 'saturated: it spills even without a core to spare');
  assert.equal(chooseWorker([saturated, busy, idle], 0), 1, 'saturated: to the next that is not saturated');
  assert.equal(chooseWorker([saturated, { elu: 0.99, cpu: 0.99, fresh: 0 }], 0), 0, 'all saturated: the least busy');
  // Busy by utilisation, but its thread was on a CPU a third of the time: the machine's cores are taken by
  // other processes (utilisation counts the wait for one). A second worker would compete for the same cores.
  const contended = { elu: 0.99, cpu: 0.35, fresh: 0 };
  assert.equal(chooseWorker([contended, idle], 0), 0, 'contended, not saturated: it stays');
  assert.equal(chooseWorker([contended, idle], SPARE_TO_SPREAD), 1, 'contended, and a core idle after all: the next');
  assert.equal(chooseWorker([busy, { elu: 0.95, cpu: 0.9, fresh: 0 }, { elu: 0.7, cpu: 0.7, fresh: 0 }], SPARE_TO_SPREAD), 2, 'all busy: the least busy');
  assert.equal(chooseWorker([idle], 0), 0);
});

test('fill: connections handed over since the last heartbeat count, so a burst spills before the worker reports', () => {
  const burst = Math.ceil((FILL_UP_TO - idle.elu) / NEW_CONNECTION_LOAD);
  assert.equal(chooseWorker([{ elu: idle.elu, cpu: idle.cpu, fresh: burst - 1 }, idle], 2), 0);
  assert.equal(chooseWorker([{ elu: idle.elu, cpu: idle.cpu, fresh: burst }, idle], 2), 1);
});

test('spare cores: the idle share of the machine between two samples, in cores', () => {
  // Two cores, 200 ticks: one core busy, the other idle: one core to spare.
  assert.equal(spareCores({ idle: 0, total: 0, cores: 2 }, { idle: 100, total: 200, cores: 2 }), 1);
  assert.equal(spareCores({ idle: 100, total: 200, cores: 2 }, { idle: 125, total: 400, cores: 2 }), 0.25);
  assert.equal(spareCores(null, { idle: 10, total: 20, cores: 2 }), 2, 'no sample yet: all spare');
  const now = cpuSample();
  assert.ok(now.total > 0 && now.idle <= now.total && now.cores >= 1, JSON.stringify(now));
});

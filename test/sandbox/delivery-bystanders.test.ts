/**
 * When a delivery of answers into an isolate fails — a continuation after `await` runs out of memory or never
 * ends — the isolate is given up, and only the call whose code failed gets a failure: the other clients' calls
 * that waited on that isolate, or whose answers shared the delivery, run again from the start on another
 * isolate, where their journals answer what they had started (nothing counts twice). They used to fail with
 * it (451 to clients that did nothing wrong). A store whose answers the test releases (held-store.ts) orders
 * the steps; no timing is relied on: whatever the machine's load, the culprit fails and the bystander succeeds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { heldStore } from './helpers/held-store.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

/** Call 0's continuation is hostile: it loops the first time it runs in an isolate, then exhausts its memory. */
const SCRIPT = `let seen = 0;
export default async (ctx) => {
  const r = await rate('k' + ctx.n, 10, 60);
  if (ctx.n === 0) {
    if (ctx.loopFirst && seen++ === 0) for (;;) {}
    const kept = [];
    for (;;) kept.push(new Array(1e6).fill(kept.length));
  }
  return accept({ text: ctx.n + ':' + r.count });
}`;

const fails = (p: Promise<unknown>) => assert.rejects(p, (e: unknown) => e instanceof ScriptFailure && (e.kind === 'memory' || e.kind === 'timeout'));
const text = async (p: Promise<unknown>): Promise<string> => ((await p) as { text: string }).text;

test('a continuation that exhausts memory in a fast-path delivery fails alone; the call whose answer shared the delivery is served', async () => {
  const held = heldStore();
  await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 1000, timeoutMs: 5000, isolates: 2, scripts: [js('mailfrom', SCRIPT)] }, async (sandbox) => {
    const culprit = sandbox.invoke('mailfrom', { n: 0 }, 'c0');
    const bystander = sandbox.invoke('mailfrom', { n: 1 }, 'c1');
    await held.until(2);
    held.answerAll(); // one delivery: the culprit's continuation runs first and exhausts the isolate's memory
    await fails(culprit);
    assert.equal(await text(bystander), '1:1');
    assert.equal(held.counts.started, 2, 'the bystander\'s run from the start took its answer from its journal');
  });
});

test('a continuation that fails on an isolate thread fails alone; a call that waited on that isolate for its own answer is served', async () => {
  const held = heldStore();
  // The culprit's continuation loops on the fast path (stopped at the budget), then runs again from the start on
  // an isolate thread of the same isolate, where it exhausts memory; the bystander still waits there for its answer.
  await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 5, timeoutMs: 5000, isolates: 2, scripts: [js('mailfrom', SCRIPT)] }, async (sandbox) => {
    const culprit = sandbox.invoke('mailfrom', { n: 0, loopFirst: true }, 'c0');
    const bystander = sandbox.invoke('mailfrom', { n: 1 }, 'c1');
    await held.until(2);
    held.answerOldest(); // the culprit's
    await fails(culprit);
    held.answerAll(); // the bystander's answer comes after the isolate it waited on was lost
    assert.equal(await text(bystander), '1:1');
    assert.equal(held.counts.started, 2);
  });
});

test('a call run on an isolate thread (predelivery) is not failed by another call\'s continuation on its isolate', async () => {
  const held = heldStore();
  const predelivery = `export default async (ctx) => { const r = await rate('p', 10, 60); return deliver(); }`;
  await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 1000, timeoutMs: 5000, isolates: 2,
    scripts: [js('mailfrom', SCRIPT), js('predelivery', predelivery)] }, async (sandbox) => {
    const culprit = sandbox.invoke('mailfrom', { n: 0 }, 'c0'); // waits on the first isolate, which is free meanwhile
    await held.until(1);
    const bystander = sandbox.invoke('predelivery', {}, null); // runs on an isolate thread of that isolate, and waits there
    await held.until(2);
    held.answerOldest(); // the culprit's continuation exhausts the memory of the isolate the predelivery call waits on
    await fails(culprit);
    held.answerAll();
    assert.deepEqual(await bystander, { verdict: 'deliver' });
    assert.equal(held.counts.started, 2);
  });
});

test('a call whose answer comes while another call\'s continuation spins on its isolate runs again elsewhere at once', async () => {
  const held = heldStore();
  const host = recordingHost();
  // The culprit's continuation spins on an isolate thread until its time limit. The bystander's answer came then:
  // it waited for the spin to end (and then for the isolate to be replaced), to run again with what was left of
  // its deadline. It runs again on the other isolate now, and settles while the culprit still spins.
  const predelivery = `export default async () => { await rate('p', 10, 60); log('spinning'); for (;;) {} }`;
  await withSandbox({ host: { ...host, store: held.store }, fastPathMs: 1000, timeoutMs: 4000, isolates: 2,
    scripts: [js('mailfrom', SCRIPT), js('predelivery', predelivery)] }, async (sandbox) => {
    // Its outcome taken at once: on a loaded machine it may end at its own deadline before the test looks at it (an
    // unhandled rejection then failed the test).
    const bystander = sandbox.invoke('mailfrom', { n: 1 }, 'c1').then((v) => v, (e: unknown) => e); // waits for its answer; the isolate is free meanwhile
    await held.until(1);
    const culprit = sandbox.invoke('predelivery', {}, null); // the first free isolate: the one the bystander waits on
    await held.until(2);
    held.answerNewest();
    while (!host.logs.some((l) => l.message === 'spinning')) await new Promise((r) => setTimeout(r, 10));
    held.answerAll(); // the bystander's, behind the spinning continuation
    const first = await Promise.race([bystander.then(() => 'bystander'), culprit.then(() => 'culprit', () => 'culprit')]);
    assert.equal(first, 'bystander', 'it did not wait for the spin to end');
    assert.equal(await text(bystander), '1:1');
    assert.equal(held.counts.started, 2, 'its run from the start took its answer from its journal');
    await fails(culprit);
  });
});

test('a call that waited on an isolate abandoned at another call\'s deadline runs again; it is not failed with it', async () => {
  const held = heldStore();
  // The culprit's continuation spins past the culprit's deadline (its answer comes late, so the delivery's own
  // time limit ends after it): the pool abandons the isolate then. The bystander, a fast-path call waiting on that
  // isolate for its answer, failed with it ("the sandbox was disposed during the call": 451 to a client that did
  // nothing wrong).
  const predelivery = `export default async () => { await rate('p', 10, 60); for (;;) {} }`;
  await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 1000, timeoutMs: 1000, isolates: 1,
    scripts: [js('mailfrom', SCRIPT), js('predelivery', predelivery)] }, async (sandbox) => {
    // Its outcome taken at once: on a loaded machine it may end at its own deadline before the test looks at it (an
    // unhandled rejection then failed the test).
    const bystander = sandbox.invoke('mailfrom', { n: 1 }, 'c1').then((v) => v, (e: unknown) => e); // waits for its answer; the isolate is free meanwhile
    await held.until(1);
    const culprit = sandbox.invoke('predelivery', {}, null);
    await held.until(2);
    await new Promise((r) => setTimeout(r, 900));
    held.answerNewest(); // the culprit's: its continuation spins until its deadline abandons the isolate
    await fails(culprit);
    held.answerAll();
    // It runs again with what is left of its deadline (its answer comes only now): on a loaded machine that may end
    // at its own deadline (kind timeout), never as a failure of the other call's isolate.
    const outcome = await bystander;
    if (outcome instanceof ScriptFailure) assert.equal(outcome.kind, 'timeout', outcome.message);
    else assert.equal((outcome as { text: string }).text, '1:1');
    assert.equal(held.counts.started, 2, 'the bystander\'s run from the start took its answer from its journal');
  });
});

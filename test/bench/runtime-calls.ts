/**
 * Developer aid: `node test/bench/runtime-calls.ts [<treeA> <treeB>]` — what a call costs the isolate runtime
 * alone (engine/sandbox/isolate-runtime.ts: the runner, the helpers, the promise machinery, isolated-vm's entry
 * and callback crossings), with a host that answers every callback at once and does nothing else: no slot, no
 * journal, no store. Batches of 10 calls per entry, as the fast path makes them; targets a plain mailfrom script,
 * the same made async, one awaiting rate() answered at once, and one awaiting rate() answered later (a second
 * entry delivers the batch's answers, as for Redis). CPU per call (this process), median of ROUNDS
 * (5) runs of CALLS (300 000) per tree and target, trees alternating: without SMTP, TLS or the host's own
 * share, a change to the runtime shows here at a few tenths of a µs even on a loaded machine. Default: this tree.
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { fork } from 'node:child_process';
import type ivm from 'isolated-vm';
import { median } from './measure.ts';

const CALLS = Number(process.env.CALLS ?? 300_000);
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const BATCH = 10;
const MODES = ['plain', 'async', 'rate', 'later'] as const;

if (process.argv[2] === '--child') {
  const [, , , runtimeFile, mode] = process.argv;
  const { default: ivmModule } = await import('isolated-vm');
  const { installRuntime } = await import(pathToFileURL(runtimeFile!).href) as { installRuntime: (...a: unknown[]) => unknown };
  const isolate = new ivmModule.Isolate({ memoryLimit: 128 });
  const context = isolate.createContextSync();
  const answer = JSON.stringify({ allowed: true, count: 1, resetSeconds: 3600 });
  // sha1, sha256, md5, hmac, lookup, log, startOperation, message text: the runtime's host callbacks, in order.
  const pending: number[] = [];
  const start = mode === 'later' ? (opId: number) => { pending.push(opId); return null; } : () => answer;
  const callbacks = [() => '', () => '', () => '', () => '', () => null, () => undefined, start, () => ''].map((f) => new ivmModule.Callback(f as () => unknown));
  const runtime = context.evalClosureSync(`return (${installRuntime.toString()})($0, $1, $2, $3, $4, $5, $6, $7);`, callbacks, { result: { reference: true } }) as ivm.Reference<Record<string, unknown>>;
  const run = runtime.getSync('run', { reference: true }) as ivm.Reference<(...a: unknown[]) => unknown>;
  const deliver = runtime.getSync('deliver', { reference: true }) as ivm.Reference<(...a: unknown[]) => unknown>;
  const register = runtime.getSync('register', { reference: true }) as ivm.Reference<(...a: unknown[]) => unknown>;
  const lookup = `if (lookup('senders', ctx.address.domain) === 'blocked') return reject('blocked');`;
  const source = mode === 'plain' ? `(function (ctx) { ${lookup} })`
    : mode === 'async' ? `(async function (ctx) { ${lookup} await null; })`
    : `(async function (ctx) { ${lookup} const r = await rate('from:' + ctx.address.address, 1000000000, 3600); if (!r.allowed) return defer('slow down'); })`;
  register.applySync(undefined, ['mailfrom', (context.evalSync(source, { reference: true }) as ivm.Reference<unknown>).derefInto()]);
  let id = 0;
  const batch = (): string => JSON.stringify(Array.from({ length: BATCH }, (_, j) => ['mailfrom',
    { transaction: { id: 'x', sender: null, recipients: [] }, address: { address: `a${j}@b.c`, localPart: 'a', domain: 'b.c', params: {} } },
    null, null, false, null, null, false, ++id]));
  const answerText = JSON.stringify(answer);
  const entry = (): unknown => {
    const out = run.applySync(undefined, [batch(), false, -2, true], { timeout: 1000, result: { copy: true } });
    if (pending.length === 0) return out;
    let wire = '[';
    for (let i = 0; i < pending.length; i++) wire += (i ? ',' : '') + '[' + pending[i] + ',1,' + answerText + ']';
    pending.length = 0;
    return deliver.applySync(undefined, [wire + ']', true, true], { timeout: 1000, result: { copy: true } });
  };
  for (let i = 0; i < 2000; i++) entry();
  const before = process.cpuUsage();
  for (let i = 0; i < CALLS / BATCH; i++) entry();
  const used = process.cpuUsage(before);
  process.send!((used.user + used.system) / CALLS);
  process.exit(0);
}

const trees = process.argv.length > 2 ? process.argv.slice(2).map((t) => resolve(t)) : [resolve('.')];
const self = new URL(import.meta.url).pathname;
const once = (tree: string, mode: string): Promise<number> => new Promise((done, fail) => {
  const child = fork(self, ['--child', resolve(tree, 'engine/sandbox/isolate-runtime.ts'), mode], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  child.once('message', (m) => done(m as number));
  child.once('exit', (code) => { if (code !== 0) fail(new Error(`${tree} ${mode}: exit ${code}`)); });
});
const results = trees.map(() => Object.fromEntries(MODES.map((m) => [m, [] as number[]])));
for (let r = 0; r < ROUNDS; r++) {
  for (const mode of MODES) {
    const order = r % 2 ? [...trees.keys()].reverse() : [...trees.keys()];
    for (const t of order) results[t]![mode]!.push(await once(trees[t]!, mode));
  }
}
console.log(`isolate runtime alone, CPU µs per call (median of ${ROUNDS} × ${CALLS}, ${BATCH} per entry)`);
console.log('tree'.padEnd(40) + MODES.map((m) => m.padStart(8)).join('') + '   rate − async');
for (const [t, tree] of trees.entries()) {
  const m = (mode: string): number => median(results[t]![mode]!);
  console.log(tree.slice(-39).padEnd(40) + MODES.map((mode) => m(mode).toFixed(2).padStart(8)).join('') + (m('rate') - m('async')).toFixed(2).padStart(15));
}

/**
 * Postern switches off V8's collection of dead WebAssembly code: that collection can tear a just-disposed
 * isolated-vm isolate down on a V8 thread that holds the wasm engine's lock, and the teardown takes the lock
 * again (a deadlock seen in CI; engine/sandbox/no-wasm-code-gc.ts). The dead code here is Node's own
 * TypeScript stripper's, replaced as it warms up. V8's trace of the collection shows what happens:
 * `--stress-wasm-code-gc` asks for a collection as soon as any code dies (trace: "limit: 0 bytes").
 *
 * What the sandbox's import can promise is that no collection *starts* after it: one started before it,
 * while Node stripped the sandbox's own modules, still runs to its end (on a loaded machine the ordinary
 * 64 kB threshold is reached there: the trace then shows one collection with a non-zero limit). The installed
 * command and the processes postern serve forks switch the collection off before they strip anything:
 * test/cluster/wasm-code-gc.test.ts checks that nothing at all is collected there.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const engine = join(import.meta.dirname, '../../engine/sandbox');

/** V8's trace lines from a child that strips TypeScript 8 times with the collection stressed (set at run time, after the sandbox when there is one). */
function traceOfStripping(withSandbox: boolean): string[] {
  const child = `
    ${withSandbox ? `await import(${JSON.stringify(join(engine, 'isolate-slot.ts'))});` : ''}
    const v8 = await import('node:v8');
    v8.setFlagsFromString('--stress-wasm-code-gc');
    const { stripTypes } = await import(${JSON.stringify(join(engine, 'type-strip.ts'))});
    for (let i = 0; i < 8; i++) await stripTypes([{ file: 'x.ts', text: 'const a: number = 1; function f(x: string): void {}\\n'.repeat(100 + i) }]);
  `;
  const r = spawnSync(process.execPath, ['--trace-wasm-code-gc', '--input-type=module', '--eval', child], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  return (r.stdout + r.stderr).split('\n').filter((l) => l.startsWith('[wasm-gc]'));
}

/** Collections asked for while the stress flag was set: V8 names its threshold, 0 under stress. */
const startedUnderStress = (trace: string[]): string[] =>
  trace.filter((l) => /^\[wasm-gc\] (Triggering GC|Scheduling another GC).*limit: 0 bytes/.test(l));

test('control: without the sandbox, stripping TypeScript under the stress flag collects dead wasm code', () => {
  assert.ok(startedUnderStress(traceOfStripping(false)).length > 0);
});

test('after the sandbox is loaded, no collection of dead wasm code starts', () => {
  const trace = traceOfStripping(true);
  assert.deepEqual(startedUnderStress(trace), [], trace.join('\n'));
});

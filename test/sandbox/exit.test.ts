/**
 * A process that exits while isolated-vm still tears a disposed isolate down dies of SIGSEGV (a test file
 * then fails with every test passed). Sandbox.dispose()'s promise settles once the isolates' threads have
 * come back and a grace has passed: a process that awaits it before process.exit() exits cleanly, even when
 * the isolates were disposed with scripts running on their threads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';

const SANDBOX = join(import.meta.dirname, '../../engine/sandbox/index.ts');

const CHILD = `
const { Sandbox } = await import(${JSON.stringify(SANDBOX)});
let spinning = 0;
let bothSpin;
const both = new Promise((resolve) => { bothSpin = resolve; });
const host = { lookup: () => null, log: () => { if (++spinning === 2) bothSpin(); } };
const sandbox = await Sandbox.create({
  host, isolates: 2, fastPathMs: 0, timeoutMs: 60000,
  scripts: [{ hook: 'helo', file: '/scripts/helo.js', source: 'export default () => { log("spinning"); for (;;) {} }' }],
});
const calls = [sandbox.invoke('helo', {}, 'c1'), sandbox.invoke('helo', {}, 'c2')].map((p) => p.catch((e) => e));
await both; // a script runs on each isolate's thread now
await sandbox.dispose();
const outcomes = await Promise.all(calls);
process.stdout.write(outcomes.map((e) => String(e.message)).join('\\n') + '\\n');
process.exit(0);
`;

function runChild(): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '--eval', CHILD], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

test('a process that awaits dispose() exits cleanly after disposing isolates with scripts running on their threads', async () => {
  for (let i = 0; i < 5; i++) {
    const r = await runChild();
    assert.deepEqual([r.code, r.signal], [0, null], `run ${i}: ${r.stderr}`);
    assert.equal(r.stdout, 'the sandbox was disposed during the call\nthe sandbox was disposed during the call\n');
  }
});

/**
 * The installed command (bin/postern.js) and the processes postern serve forks switch V8's collection of
 * dead WebAssembly code off before they strip any TypeScript (why: engine/sandbox/no-wasm-code-gc.ts).
 * Under V8's stress flag (a collection as soon as any code dies) and its trace, a real server whose
 * supervisor and workers strip their modules and a TypeScript script, and run it, collects nothing at all.
 * Without the early switch the same run traces hundreds of lines (the supervisor's and each worker's own
 * modules, stripped before the sandbox's import switches it off). test/sandbox/wasm-code-gc.test.ts has
 * the control: stripping TypeScript under these flags does collect.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ONE_WORKER, greeted, startCluster, workerPid } from '../helpers/cluster.ts';

// One worker: every child is forked the same way (typescript-children.ts), and under the stress flag each process
// costs seconds of CPU; a second worker only repeated the first's trace.
test('postern serve started as installed collects no wasm code at all, in the supervisor or its workers, while scripts load and run', async () => {
  const c = await startCluster({
    config: ONE_WORKER,
    scripts: { 'rcptto.ts': 'export default function (ctx: { envelope: unknown }): void { log(String(typeof ctx.envelope)); }\n' },
    installed: true,
    nodeArgs: ['--trace-wasm-code-gc', '--stress-wasm-code-gc'],
  });
  try {
    await workerPid(c, 0);
    for (let i = 0; i < 4; i++) { // the worker's scripts stripped and run
      const client = await greeted(c);
      const r = await client.sendMail('sender@example.test', ['user@example.test'], 'Subject: t\r\n\r\nwasm\r\n');
      assert.equal(r.code, 250, r.text);
      await client.quit();
    }
  } finally {
    await c.stop();
  }
  assert.equal(c.proc.exitCode, 0, 'a clean stop, so V8 flushed what it traced');
  const trace = c.logs.map((l) => String(l.text ?? '')).filter((l) => l.startsWith('[wasm-gc]'));
  assert.deepEqual(trace, []);
});

/**
 * A failure is logged for every call, so what a script throws leaves the sandbox at most a log line long
 * (8192 characters, as log()'s lines): `throw 'x'.repeat(2e7)` sent 20 MB to the host, to be parsed on the
 * event loop and written to the log, per SMTP command. The throw is still located by file and line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

const SCRIPT = [
  'export default async (ctx) => {',
  '  if (ctx.later) await null;',
  '  const big = "x".repeat(2_000_000);',
  '  if (ctx.kind === "string") throw big;',
  '  if (ctx.kind === "name") { const e = new Error("m"); e.name = big; throw e; }',
  '  if (ctx.kind === "path") return { verdict: "reject", [big]: 1n };',
  '  throw new Error(big);',
  '};',
].join('\n');

for (const fastPathMs of [5, 0]) {
  for (const kind of ['message', 'string', 'name', 'path']) {
    const later = fastPathMs === 0; // each way once: thrown in the call's own turn, and after an await
    {
      test(`a ${kind} of 2 MB ${later ? 'after await' : 'thrown at once'} leaves as at most a log line (fastPathMs ${fastPathMs})`, async () => {
        await withSandbox({ host: recordingHost(), isolates: 1, fastPathMs, timeoutMs: 5000, scripts: [js('rcptto', SCRIPT)] }, async (sandbox) => {
          await assert.rejects(sandbox.invoke('rcptto', { kind, later }, 'c'), (e: unknown) => {
            assert.ok(e instanceof ScriptFailure && e.kind === 'error', String(e).slice(0, 200));
            assert.ok(e.message.length < 2 * 8192 + 100, `${e.message.length} characters`);
            assert.match(e.message, /… \(\d+ more characters\)/);
            if (kind === 'message' || kind === 'name') assert.equal(e.line, kind === 'name' ? 5 : 7, 'located by its frames');
            return true;
          });
        });
      });
    }
  }
}

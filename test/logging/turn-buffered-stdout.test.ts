/**
 * The log's stdout writes once per event-loop turn; no line may be lost for it, whether the process
 * exits, throws, or hangs until a watchdog thread flushes the shared buffer and kills it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const fixture = join(import.meta.dirname, 'fixtures/log-then.ts');

function run(how: string): { lines: string[]; status: number | null; signal: string | null } {
  const r = spawnSync(process.execPath, [fixture, how], { encoding: 'utf8', timeout: 60_000 });
  return { lines: r.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { msg: string }).msg), status: r.status, signal: r.signal };
}

for (const how of ['exit', 'throw', 'hang']) {
  test(`every line buffered before the process ends is written (${how})`, () => {
    const r = run(how);
    assert.deepEqual(r.lines, ['line 1', 'line 2', 'line 3']);
    if (how === 'hang') assert.equal(r.signal, 'SIGKILL');
    else assert.equal(r.status, how === 'exit' ? 0 : 1);
  });
}

test('the lines of one turn reach stdout in order, also past the buffer size', () => {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
    const { createLogger } = await import(${JSON.stringify(join(import.meta.dirname, '../../engine/logging/logger.ts'))});
    const log = createLogger('info');
    for (let i = 0; i < 5000; i++) log.info({ i, pad: 'x'.repeat(i % 97) }, 'n' + i);
    log.info({ big: 'y'.repeat(100000) }, 'big');
    log.info('last');
  `], { encoding: 'utf8', timeout: 60_000 });
  const lines = r.stdout.split('\n').filter(Boolean);
  // A line over one atomic pipe write (4096 bytes) comes as whole lines of its parts (engine/logging/whole-lines.ts).
  assert.ok(lines.every((l) => Buffer.byteLength(l) < 4096));
  const records = lines.map((l) => JSON.parse(l) as { msg: string; part?: string; big?: string });
  assert.equal(records.filter((l) => l.part !== undefined).map((l) => l.big).join(''), 'y'.repeat(100000));
  const msgs = records.filter((l) => l.part === undefined || l.part.startsWith('1/')).map((l) => l.msg);
  assert.equal(msgs.length, 5002);
  assert.deepEqual(msgs.slice(0, 3), ['n0', 'n1', 'n2']);
  assert.deepEqual(msgs.slice(-3), ['n4999', 'big', 'last']);
});

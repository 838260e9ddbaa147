/**
 * Worker processes share one stdout pipe (the supervisor's). Each writes its lines once per event-loop
 * turn, in writes of whole lines of at most PIPE_BUF bytes, so that no line of one process is cut by
 * another's: here four processes log at once, many turns of lines of mixed lengths (a turn fills the
 * buffer past 4 KiB), into one pipe; every line must come out whole, each process's in its order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';

const LOGGER = join(import.meta.dirname, '../../engine/logging/logger.ts');
const PROCESSES = 4;
const TURNS = 200;
const PER_TURN = 40;

test('lines of several processes on one pipe are never interleaved', async () => {
  const child = `
    const { createLogger } = await import(${JSON.stringify(LOGGER)});
    const log = createLogger('info');
    let turn = 0;
    const next = () => {
      for (let i = 0; i < ${PER_TURN}; i++) log.info({ p: Number(process.argv[1]), n: turn * ${PER_TURN} + i, pad: 'x'.repeat((turn * 7 + i * 13) % 1500) }, 'l');
      if (++turn < ${TURNS}) setImmediate(next);
    };
    next();
  `;
  // One shell: its children inherit the same pipe as their stdout, as worker processes inherit the supervisor's.
  const script = Array.from({ length: PROCESSES }, (_, p) => `"$NODE" --input-type=module -e "$CHILD" ${p} &`).join('\n') + '\nwait\n';
  const sh = spawn('/bin/sh', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, NODE: process.execPath, CHILD: child } });
  let out = '';
  sh.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  const code = await new Promise<number | null>((resolve) => sh.once('close', resolve));
  assert.equal(code, 0);
  const next = new Array<number>(PROCESSES).fill(0);
  const lines = out.split('\n').filter(Boolean);
  for (const line of lines) {
    const l = JSON.parse(line) as { p: number; n: number; msg: string };
    assert.equal(l.n, next[l.p], `process ${l.p}: line ${next[l.p]} next`);
    next[l.p]!++;
  }
  assert.deepEqual(next, new Array(PROCESSES).fill(TURNS * PER_TURN));
});

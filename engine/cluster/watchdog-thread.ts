/**
 * Runs on its own thread in every worker process and watches the main thread's heartbeat. A main thread
 * stuck for longer than hangMs (inside a V8 builtin a script started, which no time limit interrupts)
 * cannot save itself: this thread writes a crash record naming the scripts that were running, so the
 * supervisor can fence them, and kills the process. Only synchronous writes: nothing here may wait for
 * the main thread.
 */
import { workerData, parentPort } from 'node:worker_threads';
import { writeFileSync, mkdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';

interface Script { hook: string; file: string; sha256: string }
const { buffer, crashDir, worker, hangMs } = workerData as { buffer: SharedArrayBuffer; crashDir: string; worker: number; hangMs: number };
const cells = new Int32Array(buffer);
const table = new Map<number, Script>();
parentPort!.on('message', (m: { id: number; script: Script }) => table.set(m.id, m.script));

let last = Atomics.load(cells, 0);
let lastChange = Date.now();
setInterval(() => {
  const beat = Atomics.load(cells, 0);
  const now = Date.now();
  if (beat !== last) {
    last = beat;
    lastChange = now;
    return;
  }
  if (now - lastChange < hangMs) return;
  const n = Atomics.load(cells, 1);
  const scripts = Array.from(cells.subarray(2, 2 + n)).map((id) => table.get(id)).filter((s): s is Script => s !== undefined);
  const record = { at: new Date(now).toISOString(), pid: process.pid, worker, reason: 'hang', stalledMs: now - lastChange, scripts };
  try {
    mkdirSync(crashDir, { recursive: true });
    writeFileSync(join(crashDir, `crash-${process.pid}-${now}.json`), JSON.stringify(record));
  } catch { /* the kill matters more than the record */ }
  const msg = scripts.length ? `worker ${worker} hung in ${scripts.map((s) => `${s.hook} (${s.file})`).join(', ')}: killing it` : `worker ${worker} hung: killing it`;
  try { writeSync(1, `${JSON.stringify({ level: 50, time: now, pid: process.pid, worker, stalledMs: now - lastChange, scripts, msg })}\n`); } catch { /* stdout gone */ }
  process.kill(process.pid, 'SIGKILL');
}, Math.max(20, Math.floor(hangMs / 10)));

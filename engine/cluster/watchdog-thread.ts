/**
 * Runs on its own thread in every worker process and watches the main thread's heartbeat. A main thread
 * stuck for longer than hangMs (inside a V8 builtin a script started, which no time limit interrupts;
 * a main thread still making read and write calls is busy, not stuck: thread-progress.ts; time it waited for a CPU
 * is not counted: silence-clock.ts)
 * cannot save itself: this thread writes a crash record naming the scripts that were running, so the
 * supervisor can fence them, and kills the process. Only synchronous writes: nothing here may wait for
 * the main thread.
 */
import { workerData, parentPort } from 'node:worker_threads';
import { writeSync } from 'node:fs';
import { writeCrashRecord, type CrashRecordFile } from './crash-record.ts';
import { describeRunning, StallMirror, type RunningCallTable } from '../sandbox/running-call.ts';
import { flushPendingLog } from '../logging/turn-buffered-stdout.ts';
import { BUSY_WITHOUT_TIMERS_MS, ThreadProgress } from './thread-progress.ts';
import { SilenceClock } from './silence-clock.ts';

const { marker, heartbeat, crashDir, worker, hangMs, mirror, logBuffer, role = 'worker' } = workerData as {
  marker: SharedArrayBuffer; heartbeat: SharedArrayBuffer; crashDir: string; worker: number; hangMs: number; mirror: string;
  /** Which kind of child this is (the queue process has a watchdog too): the log line names it. */
  role?: 'worker' | 'queue';
  /** The main thread's log lines not yet written (TurnBufferedStdout): they tell what led up to the hang. */
  logBuffer: SharedArrayBuffer;
};
const running = new Int32Array(marker);
const beats = new Int32Array(heartbeat);
let table: RunningCallTable = {};
parentPort!.on('message', (t: RunningCallTable) => { table = t; });

const tickMs = Math.max(20, Math.floor(hangMs / 10));
// Monotonic time: a step of the wall clock (NTP, an administrator) is no hang.
let last = Atomics.load(beats, 0);
let lastBeat = performance.now(); // the main thread's timers last ran
let lastTick = lastBeat;
const progress = new ThreadProgress(process.pid);
// The silence since the last beat or read/write call (thread-progress.ts: a busy poll is no hang), less the time the
// main thread waited for a CPU (silence-clock.ts: on a loaded host that is no hang either).
const silence = new SilenceClock(process.pid);
silence.reset(lastBeat);
// The call running now, copied into the mirror half-way to a hang: also named alone when the supervisor's
// own limit ends this process first. Its own beat tracking: late ticks (below) must not delay it.
const stall = new StallMirror(mirror, marker);
let stallBeat = last;
let stallSince = lastBeat;
setInterval(() => {
  const beat = Atomics.load(beats, 0);
  const now = performance.now();
  if (beat !== stallBeat) {
    stallBeat = beat;
    stallSince = now;
    stall.resumed();
  } else if (now - stallSince >= hangMs / 2 && Atomics.load(running, 0) !== 0) {
    stall.stalled();
  }
  // A tick this late means this thread did not run either (SIGSTOP, a frozen cgroup, a suspended VM):
  // the main thread had no chance to beat, which proves nothing; count from now.
  const late = now - lastTick > hangMs / 2;
  lastTick = now;
  if (beat !== last || late) {
    last = beat;
    lastBeat = now;
    silence.reset(now);
    progress.reset();
    return;
  }
  if (progress.moved()) silence.reset(now);
  // Busy with I/O or waiting for a CPU, a main thread may keep its timers back for BUSY_WITHOUT_TIMERS_MS at most.
  if (silence.look(now) < hangMs && now - lastBeat < BUSY_WITHOUT_TIMERS_MS) return;
  const scripts = describeRunning(Atomics.load(running, 0), table, running.length > 1 ? Atomics.load(running, 1) : 0);
  const stalledMs = Math.round(now - lastBeat);
  const record: CrashRecordFile = { at: new Date().toISOString(), pid: process.pid, worker, reason: 'hang', stalledMs, scripts };
  // The log line before the record: the supervisor may kill this process at any point here (its own limit came
  // too, on a loaded machine), and it names the scripts itself (from the running-call mirror) only when no record
  // exists. Record first, a kill between the two left the hang counted but named in no log line (seen under load).
  const msg = scripts.length ? `${role} ${worker} hung in ${scripts.map((s) => `${s.hook} (${s.file})`).join(', ')}: killing it` : `${role} ${worker} hung: killing it`;
  try { flushPendingLog(logBuffer, 1, false); } catch { /* stdout gone */ }
  try { writeSync(1, `${JSON.stringify({ level: 50, time: record.at, pid: process.pid, worker, stalledMs, scripts, msg })}\n`); } catch { /* stdout gone */ }
  try {
    writeCrashRecord(crashDir, mirror, record);
  } catch { /* the kill matters more than the record */ }
  process.kill(process.pid, 'SIGKILL');
}, tickMs);

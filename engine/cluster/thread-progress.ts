/**
 * Whether a process's main thread is still working through I/O, for the hang checks (the watchdog thread
 * and the supervisor), which judge an event loop by its timer heartbeat. A heartbeat missing for a second is
 * not always a hang: libuv runs every ready I/O callback of a poll (up to 48 × 1024 events) before the timers
 * again, and a crowd of TLS handshakes in one poll (each a signature with the server's key: 500 with an
 * RSA-4096 key is seconds of CPU) held the timers back long enough for a healthy worker to be killed as hung,
 * with every session on it. A thread stuck in a script's builtin, or blocked on a lock, makes no system calls;
 * one that reads and writes its sockets does. Linux counts each thread's read and write calls in
 * /proc/PID/task/TID/io; the main thread's id is the process id.
 */
import { readFileSync } from 'node:fs';
import { envKnob } from '../config/env-knob.ts';
import { waitsOnFile } from './file-wait.ts';

/**
 * How long a main thread may keep the timers back while its I/O moves on, or while it waits for a CPU (silence-clock.ts),
 * before it counts as hung anyway: 30 hang limits. A thread that never gets a CPU is replaced in the end, yet a host
 * overloaded for seconds at a time does not lose its sessions (SMTP clients wait minutes for a reply: RFC 5321 4.5.3.2).
 * POSTERN_SILENCE_BOUND_MS: a test of the bound shortens it rather than starve a CPU for 30 s of the suite's time.
 */
export const BUSY_WITHOUT_TIMERS_MS = envKnob('POSTERN_SILENCE_BOUND_MS', 30_000);

export class ThreadProgress {
  readonly #pid: number;
  readonly #path: string;
  #last: string | null = null;

  constructor(pid: number) {
    this.#pid = pid;
    this.#path = `/proc/${pid}/task/${pid}/io`;
  }

  /**
   * Whether the thread made read or write calls since the last look (false on the first look, or without /proc), or is
   * waiting inside one on a file now (file-wait.ts: a disk slow to answer).
   */
  moved(): boolean {
    const now = this.#calls();
    const moved = now !== null && this.#last !== null && now !== this.#last;
    this.#last = now;
    return moved || waitsOnFile(this.#pid);
  }

  /** Start over: the next look only takes a reading. */
  reset(): void {
    this.#last = null;
  }

  #calls(): string | null {
    try {
      const text = readFileSync(this.#path, 'latin1');
      const calls = /^syscr: (\d+)$/m.exec(text)?.[1];
      const writes = /^syscw: (\d+)$/m.exec(text)?.[1];
      return calls === undefined || writes === undefined ? null : `${calls}/${writes}`;
    } catch {
      return null; // no /proc, or the process is gone: no evidence of progress
    }
  }
}

/**
 * Whether a process is held still now: stopped by a signal (SIGSTOP, SIGTSTP: state T) or by a debugger (t). Its
 * silence is then not its own doing, nor that of a script it was running (false without /proc).
 */
export function heldStill(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'T' || state === 't';
  } catch {
    return false;
  }
}

/**
 * What scripts may log in all, per process and per second. Each call is bounded (isolate-runtime.ts: 1000
 * lines, 256 Ki characters), but calls are not: a script that logs its bound in every call, at a few hundred
 * calls a second, wrote 100 MB of log a second and more — a full disk or, on a pipe that cannot keep up, a server
 * thread waiting for stdout (engine/logging/turn-buffered-stdout.ts writes synchronously). Past the budget
 * script lines are dropped until the second ends, and one warning says how many. The sandbox's own lines
 * (warn and above: failures, rebuilds) are never dropped. Once lines are dropped, the isolates are told
 * (running-call.ts's word) and make no more lines until the second ends: each was still formatted, copied out
 * and parsed on the server's thread only to be dropped, and four clients whose script logged its per-call bound
 * quadrupled another client's RCPT latency (bystander median 1.5 → 6.3 ms, against a script that did the same
 * work without logging).
 */
import type { HostBridge, LogLevel } from './host-callbacks.ts';
import { LOG_CLOSED_WORD, SHADOW_LOG_CLOSED_WORD, runningCall } from './running-call.ts';
import { writtenLength } from '../logging/logger.ts';

/** Characters of script log lines per second as the log has them (JSON escapes included), all scripts of the process together. */
export const SCRIPT_LOG_CHARS_PER_SECOND = 1 << 20;
/** Script log lines per second, likewise (a line costs the logger's work whatever its length). */
export const SCRIPT_LOG_LINES_PER_SECOND = 10_000;
const WINDOW_MS = 1000;

type Log = HostBridge['log'];

class LogBudget {
  /** The running-call word that tells the isolates of this budget's sandboxes to make no more lines. */
  readonly #closedWord: number;
  /** Whose lines these are, for the warning: `scripts` or `shadow scripts`. */
  readonly #whose: string;
  #windowStart = -Infinity;
  #chars = 0;
  #lines = 0;
  #droppedLines = 0;
  #droppedChars = 0;
  /** Where the drop is told: the log of the first sandbox that lost a line in this window. */
  #tell: Log | null = null;

  constructor(closedWord: number, whose: string) {
    this.#closedWord = closedWord;
    this.#whose = whose;
  }

  /** Whether a script line of `chars` characters may be written now. */
  take(chars: number, log: Log): boolean {
    const now = performance.now();
    if (now - this.#windowStart >= WINDOW_MS) {
      this.#report();
      this.#windowStart = now;
      this.#chars = 0;
      this.#lines = 0;
    }
    if (this.#chars + chars <= SCRIPT_LOG_CHARS_PER_SECOND && this.#lines < SCRIPT_LOG_LINES_PER_SECOND) {
      this.#chars += chars;
      this.#lines++;
      return true;
    }
    if (this.#droppedLines++ === 0) {
      this.#tell = log;
      runningCall.closeScriptLog(true, this.#closedWord);
      const window = this.#windowStart;
      setTimeout(() => {
        // The second is over, whether or not a line came to start the next (unless that one is already spent too).
        if (this.#windowStart === window || this.#droppedLines === 0) runningCall.closeScriptLog(false, this.#closedWord);
        this.#report();
      }, Math.max(0, this.#windowStart + WINDOW_MS - now)).unref();
    }
    this.#droppedChars += chars;
    return false;
  }

  #report(): void {
    if (this.#droppedLines === 0) return;
    const message = `${this.#droppedLines} script log lines (${this.#droppedChars} characters) dropped: ${this.#whose} of this process may log ` +
      `${SCRIPT_LOG_LINES_PER_SECOND} lines and ${SCRIPT_LOG_CHARS_PER_SECOND} characters a second in all (and their further log() calls ` +
      'of that second made no line)';
    const tell = this.#tell;
    this.#droppedLines = 0;
    this.#droppedChars = 0;
    this.#tell = null;
    try { tell?.(null, '(sandbox)', 'warn', message); } catch { /* best effort */ }
  }
}

const liveBudget = new LogBudget(LOG_CLOSED_WORD, 'scripts');
/**
 * Shadow scripts log within a budget of their own, as they count in keys of their own: a candidate under trial that
 * logs a lot spent the shared one, and the live scripts' lines were dropped for the rest of each second.
 */
const shadowBudget = new LogBudget(SHADOW_LOG_CLOSED_WORD, 'shadow scripts');

/** `host` with its script lines (level info) held to the process's budget (`shadow`: the shadow scripts'). */
export function withLogBudget(host: HostBridge, shadow = false): HostBridge {
  const budget = shadow ? shadowBudget : liveBudget;
  const log = host.log.bind(host);
  return Object.assign(Object.create(host) as HostBridge, {
    log(connectionId: string | null, file: string, level: LogLevel, message: string): void {
      // Counted as written (escapes included): a line of zero-width spaces is nine times as long in the log.
      if (level !== 'info' || budget.take(writtenLength(message), log)) log(connectionId, file, level, message);
    },
  });
}

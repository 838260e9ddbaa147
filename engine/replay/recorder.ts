/**
 * Records every script call of this process for `postern replay` when the configuration has `replay`
 * (read from each call's generation, so a reload switches it on or off): the context, the live verdict,
 * the hook, listener or policy service and connection id — no message bodies, and no AUTH password (recorded as empty). Appends to this process's file of the day
 * (recording-files.ts); a write that fails is logged once and recording goes on with the next file, never
 * touching a session.
 */
import { closeSync, createWriteStream, fstatSync, mkdirSync, openSync, readSync, type WriteStream } from 'node:fs';
import { observeHookCalls } from '../policy/hook-calls.ts';
import { withoutPassword } from '../policy/auth-password.ts';
import type { Logger } from '../logging/logger.ts';
import { verdictLabel } from '../policy/verdict-label.ts';
import { dayOf, pruneRecordings, recordingFile, replayDir, sourceOf, type Recording } from './recording-files.ts';

/** How often (in records) the folder's size is looked at again; between looks, what is written is counted. */
const SIZE_CHECK_EVERY = 500;
/**
 * Bytes waiting for the disk past which records are dropped (counted, and said once): a stream never refuses a
 * write, so a disk slower than the calls would keep every record in memory.
 */
const MAX_PENDING_BYTES = 8 * 1024 * 1024;

export function startRecording(logger: Logger): { stop(): Promise<void> } {
  const log = logger.child({ component: 'replay' });
  let out: { day: string; stream: WriteStream } | null = null;
  let folderBytes = 0;
  let sinceCheck = 0;
  let full = false;
  let dropped = 0;
  const close = (): Promise<void> => {
    const s = out?.stream;
    out = null;
    return s ? new Promise((resolve) => s.end(resolve)) : Promise.resolve();
  };
  const stopObserving = observeHookCalls((call) => {
    const settings = call.generation.config.replay;
    if (!settings) {
      if (out) void close();
      return;
    }
    const now = Date.now();
    const day = dayOf(now);
    const dataDir = call.generation.config.dataDir;
    if (!out || out.day !== day || ++sinceCheck >= SIZE_CHECK_EVERY) {
      sinceCheck = 0;
      folderBytes = pruneRecordings(dataDir, settings.keepDays, now);
      const wasFull = full;
      full = folderBytes >= settings.maxMegabytes * 1024 * 1024;
      if (full && !wasFull) log.warn({ bytes: folderBytes, maxMegabytes: settings.maxMegabytes }, 'replay recordings folder full: not recording until old days are deleted');
    }
    if (full) return;
    const max = settings.maxMegabytes * 1024 * 1024;
    if (!out || out.day !== day) {
      void close();
      mkdirSync(replayDir(dataDir), { recursive: true, mode: 0o700 }); // personal data: the server's user only
      const file = recordingFile(dataDir, day);
      const stream = createWriteStream(file, { flags: 'a', mode: 0o600 });
      // A process with this PID killed mid-line today (a container's PIDs repeat at each restart): the next
      // record starts on a line of its own instead of being glued to that fragment, and lost with it.
      if (endsMidLine(file)) stream.write('\n');
      stream.on('error', (err) => {
        log.warn({ err: { message: err.message } }, 'replay recording failed; starting a new file');
        if (out?.stream === stream) out = null;
      });
      out = { day, stream };
    }
    const record: Recording = {
      t: new Date(now).toISOString(), listener: call.listener?.name ?? null, source: call.listener ? sourceOf(call.ctx) : null, hook: call.hook, cid: call.connectionId,
      ctx: withoutPassword(call.hook, call.ctx, '') as Record<string, unknown>, verdict: verdictLabel(call.verdict),
    };
    if (out.stream.writableLength > MAX_PENDING_BYTES) {
      if (dropped++ === 0) log.warn({ pendingBytes: out.stream.writableLength }, 'replay recording cannot keep up with the calls: dropping records until the disk catches up');
      return;
    }
    dropped = 0;
    const line = `${JSON.stringify(record)}\n`;
    // Counted as written: a data hook's record holds its header section (up to limits.maxHeaderBytes), so 500
    // records between looks at the folder wrote hundreds of MB past maxMegabytes.
    const bytes = Buffer.byteLength(line);
    if (folderBytes + bytes > max) {
      full = true;
      log.warn({ bytes: folderBytes, maxMegabytes: settings.maxMegabytes }, 'replay recordings folder full: not recording until old days are deleted');
      return;
    }
    folderBytes += bytes;
    out.stream.write(line);
  }, (generation) => {
    // Asked once per generation, at its first call: one without `replay` closes a file a reload left open.
    if (!generation.config.replay && out) void close();
    return !!generation.config.replay;
  });
  return {
    async stop() {
      stopObserving();
      await close();
    },
  };
}

/** Whether `file` exists and its last line has no newline (a write cut short). */
function endsMidLine(file: string): boolean {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return false;
  }
  try {
    const size = fstatSync(fd).size;
    const last = Buffer.alloc(1);
    return size > 0 && readSync(fd, last, 0, 1, size - 1) === 1 && last[0] !== 0x0a;
  } finally {
    closeSync(fd);
  }
}

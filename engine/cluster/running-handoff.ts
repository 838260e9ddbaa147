/**
 * What the server runs with (restart-needed.ts RunningSettings), handed by the supervisor to each child it
 * starts over a pipe of its own (the child's fd 4), read once at start and closed. Not in the environment: it
 * holds `store.redis.url`, whose password an environment variable left in /proc/<pid>/environ of every child
 * for its whole life, and in that of every program a child starts (openssl, for the account page's .p12).
 */
import { closeSync, readFileSync } from 'node:fs';
import type { ChildProcess, StdioOptions } from 'node:child_process';
import type { Writable } from 'node:stream';
import type { RunningSettings } from '../reload/restart-needed.ts';
import type { HandedParse } from '../config/handed-parse.ts';

/**
 * What a child is handed: the settings the server runs with, with its supervisor's parse of postern.yaml when it has
 * one to hand (`handedParse`). One object as before, so that a child and a supervisor of two releases (a package
 * upgraded under a running server, whose next replacement runs the new code) still read each other's settings.
 */
export type Handoff = RunningSettings & { handedParse?: HandedParse };

const FD = 4;

/** fork()'s stdio for a child: its output is the server's, fd 3 the IPC channel, fd 4 the handoff. */
export const CHILD_STDIO: StdioOptions = ['ignore', 'inherit', 'inherit', 'ipc', 'pipe'];

/** The child's environment entry that says the handoff comes (a child started otherwise reads the file alone). */
export const RUNNING_ENV = { POSTERN_RUNNING_FD: String(FD) };

/** Write `handoff` to the child just forked, and close the pipe. */
export function handOver(proc: ChildProcess, handoff: Handoff): void {
  const pipe = proc.stdio[FD] as Writable | null | undefined;
  if (!pipe) return; // not started: its 'error' and 'exit' tell the supervisor
  pipe.on('error', () => undefined); // a child that died before reading (EPIPE): its exit is what matters
  pipe.end(JSON.stringify(handoff));
}

/** In the child: what the supervisor wrote (a blocking read to the pipe's end), or undefined. */
export function takeOver(): Handoff | undefined {
  if (process.env.POSTERN_RUNNING_FD !== String(FD)) return undefined;
  try {
    return JSON.parse(readFileSync(FD, 'utf8')) as Handoff;
  } finally {
    closeSync(FD);
  }
}

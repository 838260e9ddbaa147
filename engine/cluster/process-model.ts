/** Timings and places shared by the supervisor and its children. */
import { join } from 'node:path';

/** Children beat this often (IPC to the supervisor, shared memory to their watchdog thread). */
export const HEARTBEAT_MS = 100;
/** A worker's watchdog kills its process when the event loop has not beaten for this long. */
export const HANG_MS = 1000;
/** The supervisor kills a child it has not heard from for this long (the watchdog thread itself may be stuck). */
export const SUPERVISOR_HANG_MS = 3000;
/**
 * A worker that has taken none of the connections handed to it for this long, while they wait, is replaced
 * (its channel can pass no more descriptors: see the supervisor's #tick).
 */
export const TAKE_MS = 10_000;
/** A child that has not said it is ready after this long is killed and started again. */
export const STARTUP_MS = 120_000;
/** A worker whose last heartbeat is older than this gets no new connections (it may be hanging). */
export const STALE_FOR_CONNECTIONS_MS = 300;
/**
 * A store call forwarded to the supervisor (shared-store.ts) that has no answer after this long fails
 * (StoreUnavailable: a temporary refusal). A script's call is bounded by its own time limit before that.
 */
export const STORE_CALL_MS = 1000;
/**
 * A child whose sandbox cannot recover (an isolate thread parked for good: unrecoverable.ts) stops taking
 * connections, lets its sessions end for at most this long, and ends itself to be replaced.
 */
export const RECYCLE_GRACE_MS = 30_000;
/** Crashes or hangs attributed to one script (same file content) before it is fenced. */
export const CRASHES_TO_FENCE = 3;
/**
 * The same for a shadow script (a listener's `shadowScripts`): a candidate decides no reply, so nothing is lost by
 * fencing it at once, and each crash it is let make ends every live session of its worker (421 mid-transaction).
 */
export const SHADOW_CRASHES_TO_FENCE = 1;

/** Crash records of hung workers, and the fence list. */
export function crashDir(dataDir: string): string { return join(dataDir, 'fences'); }
/** Where a child process mirrors its running-call markers (runningCall.mirrorTo), read when it dies. */
export function runningMirror(dataDir: string, pid: number): string { return join(crashDir(dataDir), `running-${pid}`); }
export function clusterStatusFile(dataDir: string): string { return join(dataDir, 'cluster.json'); }

/** The supervisor's status socket: `postern status` asks the running server here. */
export const statusSocket = (dataDir: string): string => join(dataDir, 'postern.sock');

/** How often the supervisor checks that the data directory's lock file still names it (supervisor.ts #keepLock). */
export const LOCK_CHECK_MS = 2000;

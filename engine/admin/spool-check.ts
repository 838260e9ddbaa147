/**
 * /readyz's spool check: every spool folder of the data directory can be written — `<dataDir>/spool` (the
 * queue process's bounces, a single process's mail) and, under `postern serve`, each worker's `worker-<n>` —
 * and its filesystem has more free space than `spool.minFreeBytes` and more free inodes than `spool.minFreeInodes`
 * (below either every new message is refused), the spool's reserve is not in use (engine/spool/reserve.ts), and
 * the filesystem is not read-only. Nor may a sync of a spool be past `spool.syncDeadlineMs` without having returned
 * (spoolConfirmsWrites): the disk then answers no write, every new transaction is refused, and the write probe of
 * spoolWritable() could itself wait for as long as the disk hangs.
 */
import { access, constants, readdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { ReadinessCheck } from './admin-server.ts';
import { reserveState } from '../spool/reserve.ts';
import { writable } from '../spool/free-space.ts';
import { MIN_SYNC_DEADLINE_MS } from '../spool/sync-deadline.ts';

/**
 * How long the spool check waits for the filesystem's answers (a write probe, statfs, readdir) before it says the
 * filesystem does not answer: a network filesystem whose server went away (a hard NFS mount) holds each call in
 * the kernel, and a check that waited for it never answered /readyz (nor /metrics, which gathers the same checks):
 * the load balancer and the monitoring saw timeouts instead of a reason. As long as the spool's sync deadline's
 * floor (a healthy filesystem under load answers well within it).
 */
export const SPOOL_LOOK_DEADLINE_MS = MIN_SYNC_DEADLINE_MS;

/**
 * The look at each data directory's spool under way, and since when (performance.now()): while one has not answered,
 * a check does not start another (each holds a thread of libuv's pool, which the spool's own writes wait for).
 */
const looks = new Map<string, { since: number; check: Promise<ReadinessCheck> }>();

export async function spoolWritable(dataDir: string, floors: { minFreeBytes: number; minFreeInodes: number } = { minFreeBytes: 0, minFreeInodes: 0 }, deadlineMs = SPOOL_LOOK_DEADLINE_MS): Promise<ReadinessCheck> {
  let look = looks.get(dataDir);
  if (!look) {
    const check = lookAtSpool(dataDir, floors);
    looks.set(dataDir, look = { since: performance.now(), check });
    void check.finally(() => looks.delete(dataDir));
  }
  const { since, check } = look;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<null>((resolve) => { timer = setTimeout(resolve, Math.max(0, since + deadlineMs - performance.now()), null); });
  const answer = await Promise.race([check, late]).finally(() => clearTimeout(timer));
  if (answer) return answer;
  const root = join(dataDir, 'spool');
  return { ok: false, detail: `the spool's filesystem (${root}) has not answered for ${Math.round((performance.now() - since) / 1000)} s (a disk, storage path or network filesystem server that stopped answering?): new mail cannot be kept` };
}

async function lookAtSpool(dataDir: string, floors: { minFreeBytes: number; minFreeInodes: number }): Promise<ReadinessCheck> {
  const { minFreeBytes, minFreeInodes } = floors;
  const root = join(dataDir, 'spool');
  try {
    const workers = (await readdir(root, { withFileTypes: true }))
      .filter((d) => d.isDirectory() && d.name.startsWith('worker-')).map((d) => join(root, d.name));
    for (const dir of [root, ...workers]) await access(dir, constants.W_OK);
    // access(W_OK) passes on a read-only filesystem for root, and on ext4's emergency read-only state for anyone.
    if (!await writable(root)) return { ok: false, detail: `the spool's filesystem (${root}) is read-only: new mail is refused (451 4.3.0); after an I/O error ext4 remounts read-only (see dmesg)` };
    const fs = await statfs(root);
    const free = fs.bavail * fs.bsize;
    if (free < minFreeBytes) {
      return { ok: false, detail: `${free} bytes free on the spool's filesystem, below spool.minFreeBytes (${minFreeBytes}): new mail is refused (452 4.3.1)` };
    }
    // A filesystem without a fixed number of inodes (btrfs) reports none.
    if (fs.files > 0 && fs.ffree < minFreeInodes) {
      return { ok: false, detail: `${fs.ffree} inodes free on the spool's filesystem, below spool.minFreeInodes (${minFreeInodes}): new mail is refused (452 4.3.1)` };
    }
    if (reserveState(join(root, 'reserve')) === 'released') {
      return { ok: false, detail: `the spool's filesystem filled up and its reserve is in use for the queue's bookkeeping: new mail is refused (452 4.3.1) until ${free} bytes free grow past twice the reserve above spool.minFreeBytes` };
    }
    return { ok: true };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  }
}

/**
 * The spool check while a spool's sync is past its deadline and has not returned (`hung`: the spools, and how long
 * their oldest such sync has waited), else null. Whichever worker it is, the others write to the same filesystem.
 */
export function spoolConfirmsWrites(hung: ReadonlyArray<{ spool: string; ms: number; deliveriesOnly?: boolean }>): ReadinessCheck | null {
  if (!hung.length) return null;
  const which = hung.map((h) => `${h.spool} for ${Math.round(h.ms / 1000)} s`).join(', ');
  // The queue process's writes (delivery states) refuse no mail: their outcomes wait in its memory instead.
  const consequence = hung.every((h) => h.deliveriesOnly)
    ? 'the outcomes of deliveries wait in memory, to be recorded once the disk answers'
    : 'new mail is refused (451 4.3.0) until the disk answers';
  return { ok: false, detail: `the spool cannot confirm writes: a sync past spool.syncDeadlineMs has not returned (${which}; a disk or storage path that stopped answering?): ${consequence}` };
}

/** The spools of `spools` with a sync past its deadline, for spoolConfirmsWrites(). */
export function unconfirmedSpools(spools: ReadonlyArray<{ root: string; unconfirmedFor(): number | null }>): Array<{ spool: string; ms: number }> {
  return spools.flatMap((s) => {
    const ms = s.unconfirmedFor();
    return ms === null ? [] : [{ spool: s.root, ms }];
  });
}

/**
 * What every listener shares: the current policy generation (swapped on reload), the spool, the logger
 * and the per-IP auth failure counts.
 */
import type { PolicyGeneration } from '../policy/generation.ts';
import type { Spool } from '../spool/spool.ts';
import type { Logger } from '../logging/logger.ts';
import type { AuthFailureLimiter } from '../auth/failure-limiter.ts';
import type { ConnectionCounts } from '../cluster/shared-counters.ts';
import type { SightingRecorder } from '../pki/sightings.ts';
import type { AddressListParser } from '../policy/header-senders.ts';
import { RepeatedFailure } from '../logging/repeated-failure.ts';
import { notConfirmed } from '../spool/sync-deadline.ts';

export type CertificateSightings = Pick<SightingRecorder, 'seen' | 'seenRecently'>;

export interface Runtime {
  /** The generation new sessions start with. */
  readonly generation: PolicyGeneration;
  readonly spool: Spool;
  readonly logger: Logger;
  readonly authFailures: AuthFailureLimiter;
  /** Open connections per listener and IP, when shared with other worker processes (else each listener counts its own). */
  readonly connections?: ConnectionCounts;
  /** Records which client certificates were seen (engine/pki/sightings.ts); absent in tests that need none. */
  readonly sightings?: CertificateSightings;
  /** Reads the mailboxes of a From: or Sender: field (senderLogin.headerFrom); engine/delivery/address-list.ts. */
  readonly parseAddressList: AddressListParser;
  /** Called when a message has been committed to the spool (the queue runner wakes up). */
  onSpooled?(id: string): void;
}

/**
 * The spool's filesystem is read-only (451 4.3.0), or free space is below spool.minFreeBytes or free inodes below
 * spool.minFreeInodes (current configuration; 452 4.3.1): the refusal for new mail, its reason naming which, else null.
 */
export function spoolIsFull(runtime: Runtime): 'spoolReadOnly' | 'storageFull' | 'inodesFull' | null {
  const { minFreeBytes, minFreeInodes } = runtime.generation.config.spool;
  const short = runtime.spool.freeSpace.short(minFreeBytes, minFreeInodes);
  return short === 'readOnly' ? 'spoolReadOnly' : short === 'bytes' ? 'storageFull' : short === 'inodes' ? 'inodesFull' : null;
}

/**
 * A sync of this process's spool is past spool.syncDeadlineMs and has not returned (a disk that stopped answering):
 * the refusal for a new transaction (451 4.3.0 at MAIL FROM, or at DATA before the 354), else null. Every message
 * would wait out the deadline, or be refused at once, only after its client had sent it whole. One error line per
 * episode (at its first refusal), one line when a transaction is let through again.
 */
export function spoolCannotConfirm(runtime: Runtime, cid: string): 'spoolNotConfirming' | null {
  const episode = unconfirmedEpisodes(runtime);
  const waitedMs = runtime.spool.unconfirmedFor();
  if (waitedMs === null) {
    episode.succeeded();
    return null;
  }
  episode.failed(notConfirmed('the spool\'s writes', waitedMs), { cid, spool: runtime.spool.root });
  return 'spoolNotConfirming';
}

const unconfirmedLogs = new WeakMap<Runtime, RepeatedFailure>();
function unconfirmedEpisodes(runtime: Runtime): RepeatedFailure {
  let f = unconfirmedLogs.get(runtime);
  if (!f) {
    unconfirmedLogs.set(runtime, f = new RepeatedFailure(runtime.logger,
      'the spool cannot confirm writes (a sync past spool.syncDeadlineMs has not returned): new mail refused (451 4.3.0) until the disk answers',
      'the spool confirms writes again: new mail taken'));
  }
  return f;
}

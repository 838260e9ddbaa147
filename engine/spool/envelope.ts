/** The envelope stored in each spooled message's trailer, and the delivery state kept beside it. */
import type { CertificateSummary } from '../sandbox/api/index.ts';

export interface SpoolRecipient {
  address: string;
  /** DSN NOTIFY values from RCPT TO, if any. */
  notify?: string[];
  /** DSN ORCPT from RCPT TO (`rfc822;bob@example.com`, xtext decoded), if any: passed on, and named in notices. */
  orcpt?: string;
  /** Set once this recipient is finished. */
  status?: 'delivered' | 'bounced';
  /** Last reply or error for this recipient. */
  lastError?: string;
}

export interface SpoolEnvelope {
  version: 1;
  id: string;
  /** ISO 8601. */
  receivedAt: string;
  /** Envelope sender; '' for the null sender. */
  sender: string;
  recipients: SpoolRecipient[];
  /** DSN parameters of MAIL FROM (RFC 3461), if any: passed on to a next hop that offers DSN; ENVID is named in notices. */
  dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string };
  /**
   * The MAIL FROM declared SMTPUTF8 (RFC 6531): the header may hold UTF-8 (RFC 6532), which goes only to a next hop
   * that offers SMTPUTF8, declared. Without it, 8-bit header text is a legacy client's, sent as it always was.
   */
  smtputf8?: true;
  /**
   * A notice (bounce or NOTIFY=SUCCESS notice) names the message and the delivery attempt it reports on, and the
   * recipients it reports: its id is derived from those (engine/queue/bounce.ts), so a retry of an attempt whose
   * outcome was not recorded (a crash after the notice was spooled) finds it instead of spooling another.
   */
  noticeOf?: { id: string; attempt: number; reported: string[] };
  /** Bytes of the stored message (with our Received header). */
  size: number;
  /** SHA-256 of those bytes, to detect a damaged message file before relaying it (journal records have a CRC-32 instead). */
  sha256?: string;
  /**
   * The file was written by a move out of the journal (Spool.moveOutOfJournal), made only while the message had a
   * state file, which only its removal takes away: such a file without one is what a removal racing the move left
   * (the mover killed between its rename and its own check), not a message never attempted.
   */
  movedFromJournal?: true;
  session: {
    listener: string;
    remoteAddress: string;
    helo: string | null;
    authenticatedUser: string | null;
    clientCertificate: CertificateSummary | null;
  };
  /** Delivery bookkeeping. */
  attempts: number;
  nextAttemptAt: string;
  errors: string[];
}

/** What changes as delivery proceeds, stored in `<id>.state` and laid over the envelope when read. */
export type SpoolState = Pick<SpoolEnvelope, 'attempts' | 'nextAttemptAt' | 'errors' | 'recipients'>;

/** Who put a message on hold, and when: `<id>.held` (null fields: a record cut short, held all the same). */
export interface SpoolHold {
  /** ISO 8601. */
  at: string | null;
  by: { user: string; uid: number; sudoUser: string | null; pid: number; host: string } | null;
  /** Held at acceptance by a data script's `accept({ hold })`: the script's file and its reason. */
  script?: { file: string; reason: string };
}

/**
 * `value` (a parsed `<id>.state`) as a SpoolState, or an Error naming `file`: a file that is JSON but not a
 * state (`null` read as "no state yet" sent every recipient the message again; a field of another type threw
 * in every attempt, retried for ever) is as unreadable as one that is not JSON.
 */
export function checkState(value: unknown, file: string): SpoolState {
  const bad = (what: string): Error => new Error(`${file}: not a delivery state (${what})`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('not an object');
  const v = value as Record<string, unknown>;
  if (typeof v.attempts !== 'number' || !Number.isInteger(v.attempts) || v.attempts < 0) throw bad('attempts');
  if (typeof v.nextAttemptAt !== 'string') throw bad('nextAttemptAt');
  if (!Array.isArray(v.errors) || !v.errors.every((e) => typeof e === 'string')) throw bad('errors');
  if (!Array.isArray(v.recipients)) throw bad('recipients');
  for (const r of v.recipients as unknown[]) {
    const x = r as Record<string, unknown> | null;
    if (typeof x !== 'object' || x === null || typeof x.address !== 'string') throw bad('a recipient without an address');
    if (x.status !== undefined && x.status !== 'delivered' && x.status !== 'bounced') throw bad(`a recipient's status ${JSON.stringify(x.status)}`);
    if (x.notify !== undefined && !(Array.isArray(x.notify) && x.notify.every((n) => typeof n === 'string'))) throw bad('a recipient\'s notify');
    if (x.lastError !== undefined && typeof x.lastError !== 'string') throw bad('a recipient\'s lastError');
    if (x.orcpt !== undefined && typeof x.orcpt !== 'string') throw bad('a recipient\'s orcpt');
  }
  return value as SpoolState;
}

/** The envelope stored in each spooled message's trailer, and the delivery state kept beside it. */
import type { CertificateSummary } from '../sandbox/api/index.ts';

export interface SpoolRecipient {
  address: string;
  /** DSN NOTIFY values from RCPT TO, if any. */
  notify?: string[];
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
  /** Bytes of the stored message (with our Received header). */
  size: number;
  /** SHA-256 of those bytes, to detect a damaged message file before relaying it (journal records have a CRC-32 instead). */
  sha256?: string;
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

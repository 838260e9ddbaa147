/** The envelope record stored beside each spooled message (`<id>.json`); its presence commits the message. */
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

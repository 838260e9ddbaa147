/**
 * Which account a client certificate speaks for, per listener: a pin table (SPKI SHA-256 → account,
 * whatever the chain verdict, as in mox) or a field of a CA-verified, unrevoked certificate (Dovecot).
 * A pin is tried first; it is the more specific statement.
 */
import type { PeerCertificate } from '../sandbox/api/index.ts';
import type { ListenerConfig } from '../config/schema.ts';
import type { LookupTable } from './lookup-tables.ts';
import { parseSenderList } from './sender-logins.ts';

export interface CertificateIdentity {
  identity: string | null;
  /** The certificate's key is listed in the listener's pin table. */
  pinned: boolean;
  via: 'pin' | 'field' | null;
  /** Further envelope senders named after the account on the pin line (see senderLogin). */
  senders: readonly string[];
}

export const NO_IDENTITY: CertificateIdentity = { identity: null, pinned: false, via: null, senders: [] };

export function certificateIdentity(
  listener: ListenerConfig, cert: PeerCertificate | null, pins: LookupTable | undefined,
): CertificateIdentity {
  if (!cert) return NO_IDENTITY;
  // A pin line is `pin  account [more senders…]`: the first word is the account.
  const [account, ...senders] = parseSenderList(pins?.get(cert.pin.sha256) ?? '');
  if (account) return { identity: account, pinned: true, via: 'pin', senders };
  if (!cert.verified) return NO_IDENTITY;
  const field = listener.certificateIdentity.field;
  const value = field === 'emailAddress' ? cert.subject.emailAddress
    : field === 'CN' ? cert.subject.CN
      : field === 'sanEmail' ? cert.san.email[0]
        : undefined;
  return value ? { identity: value.toLowerCase(), pinned: false, via: 'field', senders: [] } : NO_IDENTITY;
}

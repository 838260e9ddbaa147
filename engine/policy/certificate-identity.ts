/**
 * Which account a client certificate speaks for, per listener: a pin table (SPKI SHA-256 → account,
 * whatever the chain verdict, as in mox) or a field of a CA-verified, unrevoked certificate (Dovecot).
 * A pin is tried first; it is the more specific statement, unless a verified field names another account.
 */
import type { PeerCertificate } from '../sandbox/api/index.ts';
import type { ListenerConfig } from '../config/schema.ts';
import type { LookupTable } from './lookup-tables.ts';
import { asciiSafeLowerCase, parseSenderList, senderKey } from './sender-logins.ts';
import { domainKey, envelopeDomain } from './domain-key.ts';
import { DRAWS_NOTHING } from '../text/draws-nothing.ts';
import { emailPermitted, strongEnoughKey, type EmailConstraints } from '../certificates/index.ts';

export interface CertificateIdentity {
  identity: string | null;
  /** The certificate's key is listed in the listener's pin table. */
  pinned: boolean;
  via: 'pin' | 'field' | null;
  /** Further envelope senders named after the account on the pin line (see senderLogin). */
  senders: readonly string[];
}

export const NO_IDENTITY: CertificateIdentity = { identity: null, pinned: false, via: null, senders: [] };

/** What the handshake's chain says, asked only when needed (each costs a walk of the chain Node shows). */
export interface ChainFacts {
  /** The e-mail name constraints of the chain's CAs; null when the chain cannot be seen to its root. */
  emailConstraints(): readonly EmailConstraints[] | null;
  /** A CA above the certificate in the chain is listed by the listener's CRLs. */
  issuerRevoked(): boolean;
}

/** What the listener's CRLs say about a certificate (TrustedIssuers). */
export interface RevocationList {
  isRevoked(cert: { serial: string; pem: string }): boolean;
}

/**
 * `trust`: the listener's CRLs. A certificate they list names no account, pinned or not: a pin accepts a chain
 * that does not verify (self-signed, a foreign CA, expired), not one its own CA has withdrawn. (OpenSSL gives
 * one verdict, so a certificate both expired and revoked says only "expired": the CRLs are asked here.)
 */
export function certificateIdentity(
  listener: ListenerConfig, cert: PeerCertificate | null, pins: LookupTable | undefined, trust?: RevocationList,
  chain?: ChainFacts,
): CertificateIdentity {
  if (!cert || cert.verifyError === 'revoked') return NO_IDENTITY;
  // A pin line is `pin  account [more senders…]`: the first word is the account. A pin of a key too weak to
  // trust (RSA under 2048 bits) names none: the pin skips the chain check that refuses such a key.
  const pinLine = strongEnoughKey(cert) ? pins?.get(cert.pin.sha256) : undefined;
  const [account, ...senders] = parseSenderList(pinLine ?? '');
  // Likewise a CA of its chain that the CRLs list (an intermediate): OpenSSL's one verdict for an expired leaf
  // under a revoked intermediate is "expired", which a pin would accept. (A verified chain has none.)
  if (account && !cert.verified && chain?.issuerRevoked()) return NO_IDENTITY;
  const named = cert.verified ? fieldIdentity(listener, cert, chain?.emailConstraints) : null;
  // Only a certificate that would name an account is looked up: any client may present one of its own making,
  // large, with a serial the (public) CRL lists.
  if ((account || named) && trust?.isRevoked(cert)) return NO_IDENTITY;
  // A CA-verified certificate whose field names an account speaks for that account, whatever a pin says:
  // a user may pin any public key to their own account (the account page takes a pasted certificate), and
  // certificates are public, so a pin naming another account would hand the owner's connections to them.
  if (account && (named === null || named === account)) return { identity: account, pinned: true, via: 'pin', senders };
  return named ? { identity: named, pinned: false, via: 'field', senders: [] } : NO_IDENTITY;
}

/**
 * The account the listener's `field` of a verified certificate names, or null. `chainConstraints`: the e-mail
 * name constraints of the chain's CAs (null: the chain cannot be seen, an intermediate only the client sent),
 * which OpenSSL applied to the SAN e-mails and emailAddress but not to the CN (only as a host name): a CN names
 * an account only within them (engine/certificates/name-constraints.ts).
 */
function fieldIdentity(listener: ListenerConfig, cert: PeerCertificate, chainConstraints?: () => readonly EmailConstraints[] | null): string | null {
  const field = listener.certificateIdentity.field;
  const value = field === 'emailAddress' || field === 'CN' ? onlyValue(cert, field)
    : field === 'sanEmail' ? cert.san.email[0]
      : undefined;
  const name = accountName(value);
  if (name && field === 'CN' && chainConstraints) {
    const constraints = chainConstraints();
    if (constraints === null || !emailPermitted(constrainedForm(name), constraints)) return null;
  }
  return name;
}

/**
 * The CN as the constraints must see it: as the account it names binds an envelope (sender-logins.ts), case-folded
 * and its domain by its A-labels. Compared as written, a sub-CA kept out of example.com issued CN=admin@ｅｘａｍｐｌｅ.com
 * (or admin@example。com, or admin@bücher.example past xn--bcher-kva.example), which then sent as admin@example.com.
 * A domain IDNA refuses is no host a constraint can allow ('' then: not an address).
 */
function constrainedForm(name: string): string {
  const at = name.lastIndexOf('@');
  return at < 0 || domainKey(name.slice(at + 1)) ? senderKey(name) : '';
}

/**
 * The subject's one `field` attribute, or undefined when it has none or several. With two CNs (or two
 * emailAddress attributes, in separate RDNs or in one multi-valued RDN) which one is "the" name depends on
 * who reads it: OpenSSL's first, another tool's last, a multi-valued RDN's order is the DER sort of its
 * values. A CA that checks one of them and copies the rest from a request would vouch for the other.
 */
function onlyValue(cert: PeerCertificate, field: 'CN' | 'emailAddress'): string | undefined {
  let found: string | undefined;
  for (const [type, value] of cert.subject.attributes) {
    if (type !== field) continue;
    if (found !== undefined) return undefined;
    found = value;
  }
  return found;
}

/** RFC 5321's longest path is 256 octets with its brackets; no account is longer. */
const MAX_ACCOUNT_LENGTH = 254;
/**
 * Characters no account name holds: controls (NUL among them: "alice\0.evil"), format characters (bidi
 * overrides, zero-width joiners), spaces and line separators of every kind, lone surrogates, private use,
 * unassigned code points, and the other characters that draw nothing (DRAWS_NOTHING: "c\u3164eo" is not ceo).
 */
const NOT_IN_AN_ACCOUNT = new RegExp(String.raw`[\p{Cc}\p{Cf}\p{Z}\p{Cs}\p{Co}\p{Cn}]|` + DRAWS_NOTHING, 'u');

/**
 * A certificate field's value as an account name (lowercased, as every identity), or null when it cannot
 * name one. Lowercasing must not turn what is not ASCII into ASCII: U+212A KELVIN SIGN lowercases to `k`
 * and U+0130 to `i` + a combining dot, so a certificate for "\u212Aate" would otherwise speak for kate.
 * Likewise an address must be written in one of its two plain forms, NFC and its domain in A-labels or in
 * U-labels exactly: `admin@ｅｘａｍｐｌｅ.com`, `admin@example。com` or `admin@example.com.` is admin@example.com to
 * the sender binding (IDNA-mapped), so a CA that refuses requests for @example.com would otherwise issue it.
 */
export function accountName(value: string | undefined): string | null {
  if (!value || value.length > MAX_ACCOUNT_LENGTH || NOT_IN_AN_ACCOUNT.test(value)) return null;
  const lower = asciiSafeLowerCase(value);
  if (lower === null || lower !== lower.normalize('NFC')) return null;
  const at = lower.lastIndexOf('@');
  if (at >= 0 && !plainDomain(lower.slice(at + 1))) return null;
  return lower;
}

/** `domain` is its own A-label or U-label form (envelopeDomain), with no trailing dot. */
function plainDomain(domain: string): boolean {
  return domain !== '' && !domain.endsWith('.') && (domain === envelopeDomain(domain, false) || domain === envelopeDomain(domain, true));
}

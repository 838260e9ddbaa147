/**
 * The defaults that apply when no script decides: AUTH (certificate identity or password), sender binding
 * at MAIL FROM, and the relay rule at RCPT TO (local domains, authenticated sessions, trusted client
 * certificates).
 */
import type { BuiltinAuthDecision, BuiltinRelayDecision, BuiltinSenderDecision } from '../sandbox/api/index.ts';
import { someHash, verifyPassword } from '../auth/password-hash.ts';
import { userKey } from '../auth/users-file.ts';
import { asciiSafeLowerCase, asciiSafeNfc, ownsSender, senderKey } from './sender-logins.ts';
import { accountName } from './certificate-identity.ts';
import { domainKey } from './domain-key.ts';
import type { LocalRecipients } from './local-recipients.ts';

export interface AuthAttempt {
  mechanism: string;
  username: string;
  password: string;
  authzid: string;
}

export interface AuthFacts {
  /** Account the client certificate maps to, if any. */
  certificateIdentity: string | null;
  users: ReadonlyMap<string, string>;
}

export async function builtinAuth(attempt: AuthAttempt, facts: AuthFacts): Promise<BuiltinAuthDecision> {
  const refuse = (reason: BuiltinAuthDecision['reason']): BuiltinAuthDecision => ({ accepted: false, username: null, reason });
  if (attempt.mechanism === 'EXTERNAL') {
    const identity = facts.certificateIdentity;
    if (!identity) return refuse('no-identity');
    // RFC 4422 A.1: empty authzid = the identity derived from the external credentials.
    if (!attempt.authzid || attempt.authzid.toLowerCase() === identity) return { accepted: true, username: identity, reason: 'certificate-identity' };
    return refuse('authzid-not-permitted');
  }
  const username = userKey(attempt.username);
  if (!attempt.password) return refuse('empty-password');
  const ok = await verifyPassword(facts.users.get(username), attempt.password, someHash(facts.users));
  if (!ok) return refuse('bad-password');
  if (attempt.authzid && userKey(attempt.authzid) !== username) return refuse('authzid-not-permitted');
  // mox: a password login on a connection whose certificate names another account is refused.
  if (facts.certificateIdentity && facts.certificateIdentity !== username) return refuse('certificate-account-mismatch');
  return { accepted: true, username, reason: 'password' };
}

/**
 * An auth script's `accept({ username })` as a login identity: NFC and lowercased as every identity is (users file,
 * certificate fields; Dovecot's %Lu), so one account is one key to `messagesPerIdentity`, the logs and the
 * sender binding however the script or the client wrote its case. Lowercasing that would make ASCII of what is
 * not (U+212A KELVIN SIGN is `k`) leaves the name as it is: `\u212Aate` is not kate.
 */
export function scriptLoginName(username: string): string {
  const nfc = asciiSafeNfc(username);
  return asciiSafeLowerCase(nfc) ?? nfc;
}

/**
 * Whom a bare `accept()` of the auth script logs in when the built-in rule named nobody: the identity the client
 * proved or claimed for itself, never one it asked to act for. EXTERNAL: the certificate identity, when the
 * authzid is empty or names it. PLAIN, LOGIN: the username as sent (in NFC), when it is a plain account name (as a
 * certificate field must be: no spaces or controls, no mapped domain) and no other authzid was asked for.
 * Else null: acting for another account (Dovecot's master users) needs the script to name it in `username`.
 */
export function requestedAccount(attempt: AuthAttempt, certificateIdentity: string | null): string | null {
  if (attempt.mechanism === 'EXTERNAL') {
    if (!attempt.authzid) return certificateIdentity;
    return certificateIdentity && accountName(attempt.authzid) === certificateIdentity ? certificateIdentity : null;
  }
  const name = accountName(asciiSafeNfc(attempt.username));
  if (!name || (attempt.authzid && accountName(asciiSafeNfc(attempt.authzid)) !== name)) return null;
  return name;
}

export interface SenderFacts {
  /** The listener's senderLogin.enforce. */
  enforce: boolean;
  allowNullSender: boolean;
  /** The logged-in identity (null: not logged in, nothing to bind). */
  user: string | null;
  /** Senders the identity may use besides its own address (table, pin line); `@domain` for a whole domain. */
  extra: readonly string[];
}

/**
 * Each decision the sender and relay rules can make, built once (frozen: every MAIL FROM and RCPT TO that
 * makes it shares it; the sandbox copies what a script sees).
 */
const decision = <D extends BuiltinSenderDecision | BuiltinRelayDecision>(accepted: boolean, reason: D['reason']): D => Object.freeze({ accepted, reason }) as D;
const SENDER = {
  notEnforced: decision<BuiltinSenderDecision>(true, 'not-enforced'),
  notAuthenticated: decision<BuiltinSenderDecision>(true, 'not-authenticated'),
  nullSenderAllowed: decision<BuiltinSenderDecision>(true, 'null-sender-allowed'),
  nullSender: decision<BuiltinSenderDecision>(false, 'null-sender'),
  ownAddress: decision<BuiltinSenderDecision>(true, 'own-address'),
  listed: decision<BuiltinSenderDecision>(true, 'listed'),
  mismatch: decision<BuiltinSenderDecision>(false, 'sender-login-mismatch'),
};
const RELAY = {
  postmaster: decision<BuiltinRelayDecision>(true, 'postmaster'),
  localDomain: decision<BuiltinRelayDecision>(true, 'local-domain'),
  unknownRecipient: decision<BuiltinRelayDecision>(false, 'unknown-recipient'),
  authenticated: decision<BuiltinRelayDecision>(true, 'authenticated'),
  clientCertificate: decision<BuiltinRelayDecision>(true, 'client-certificate'),
  denied: decision<BuiltinRelayDecision>(false, 'relay-denied'),
};

/** May this session use `address` ("" for the null sender) as its envelope sender? */
export function builtinSender(address: string, facts: SenderFacts): BuiltinSenderDecision {
  if (!facts.enforce) return SENDER.notEnforced;
  if (!facts.user) return SENDER.notAuthenticated;
  if (address === '') return facts.allowNullSender ? SENDER.nullSenderAllowed : SENDER.nullSender;
  if (senderKey(address) === senderKey(facts.user)) return SENDER.ownAddress;
  if (ownsSender(facts.user, facts.extra, address)) return SENDER.listed;
  return SENDER.mismatch;
}

export interface RelayFacts {
  /** By domainKey() (A-labels, lower case). */
  localDomains: ReadonlySet<string>;
  /** The recipients that exist in the local domains (`localRecipients`); null: all of them. */
  localRecipients: LocalRecipients | null;
  authenticated: boolean;
  /** The listener lets any CA-verified certificate relay, and this one verified. */
  trustedCertificateMayRelay: boolean;
}

/**
 * Sender-specified routing in a local part (`user%elsewhere`, `elsewhere!user`, a quoted `user@elsewhere`):
 * a next hop that still honours the percent hack or bang paths would relay it on to `elsewhere`, so such a
 * recipient is not local whatever its domain (Postfix's reject_unauth_destination refuses it likewise).
 */
const SENDER_ROUTED = /[%!@]/;

/** `barePostmaster`: the client wrote `<postmaster>`, which every SMTP server must accept (RFC 5321 §4.5.1). */
export function builtinRelay(recipient: { localPart: string; domain: string }, facts: RelayFacts, barePostmaster = false): BuiltinRelayDecision {
  if (barePostmaster) return RELAY.postmaster;
  if (facts.localDomains.has(domainKey(recipient.domain)) && !SENDER_ROUTED.test(recipient.localPart)) {
    // Before the relay permissions: a logged-in client's mail to a mailbox that does not exist would bounce too.
    if (!facts.localRecipients || isPostmaster(recipient.localPart) || facts.localRecipients.has(recipient.localPart, recipient.domain)) return RELAY.localDomain;
    return RELAY.unknownRecipient;
  }
  if (facts.authenticated) return RELAY.authenticated;
  if (facts.trustedCertificateMayRelay) return RELAY.clientCertificate;
  return RELAY.denied;
}

/** `postmaster@` a local domain is always taken (RFC 5321 §4.5.1), listed or not. */
function isPostmaster(localPart: string): boolean {
  return localPart.length === 10 && localPart.toLowerCase() === 'postmaster';
}

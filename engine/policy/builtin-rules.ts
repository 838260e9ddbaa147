/**
 * The defaults that apply when no script decides: AUTH (certificate identity or password), sender binding
 * at MAIL FROM, and the relay rule at RCPT TO (local domains, authenticated sessions, trusted client
 * certificates).
 */
import type { BuiltinAuthDecision, BuiltinRelayDecision, BuiltinSenderDecision } from '../sandbox/api/index.ts';
import { verifyPassword } from '../auth/password-hash.ts';
import { ownsSender } from './sender-logins.ts';

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
  const refuse = (reason: string): BuiltinAuthDecision => ({ accepted: false, username: null, reason });
  if (attempt.mechanism === 'EXTERNAL') {
    const identity = facts.certificateIdentity;
    if (!identity) return refuse('no-identity');
    // RFC 4422 A.1: empty authzid = the identity derived from the external credentials.
    if (!attempt.authzid || attempt.authzid.toLowerCase() === identity) return { accepted: true, username: identity, reason: 'certificate-identity' };
    return refuse('authzid-not-permitted');
  }
  const username = attempt.username.toLowerCase();
  if (!attempt.password) return refuse('empty-password');
  const ok = await verifyPassword(facts.users.get(username), attempt.password);
  if (!ok) return refuse('bad-password');
  if (attempt.authzid && attempt.authzid.toLowerCase() !== username) return refuse('authzid-not-permitted');
  // mox: a password login on a connection whose certificate names another account is refused.
  if (facts.certificateIdentity && facts.certificateIdentity !== username) return refuse('certificate-account-mismatch');
  return { accepted: true, username, reason: 'password' };
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

/** May this session use `address` ("" for the null sender) as its envelope sender? */
export function builtinSender(address: string, facts: SenderFacts): BuiltinSenderDecision {
  if (!facts.enforce) return { accepted: true, reason: 'not-enforced' };
  if (!facts.user) return { accepted: true, reason: 'not-authenticated' };
  if (address === '') return facts.allowNullSender ? { accepted: true, reason: 'null-sender-allowed' } : { accepted: false, reason: 'null-sender' };
  if (address.toLowerCase() === facts.user.toLowerCase()) return { accepted: true, reason: 'own-address' };
  if (ownsSender(facts.user, facts.extra, address)) return { accepted: true, reason: 'listed' };
  return { accepted: false, reason: 'sender-login-mismatch' };
}

export interface RelayFacts {
  localDomains: ReadonlySet<string>;
  authenticated: boolean;
  /** The listener lets any CA-verified certificate relay, and this one verified. */
  trustedCertificateMayRelay: boolean;
}

export function builtinRelay(domain: string, facts: RelayFacts): BuiltinRelayDecision {
  if (facts.localDomains.has(domain.toLowerCase())) return { accepted: true, reason: 'local-domain' };
  if (facts.authenticated) return { accepted: true, reason: 'authenticated' };
  if (facts.trustedCertificateMayRelay) return { accepted: true, reason: 'client-certificate' };
  return { accepted: false, reason: 'relay-denied' };
}

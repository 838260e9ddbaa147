/**
 * Who is signing in to the account page: a password from the users file, checked under the same per-address
 * failure counts as SMTP AUTH (a guess here counts there, and the reverse), or the client certificate of the
 * HTTPS connection, named by the SMTP listener's own rules (pin table first, then a verified field).
 */
import type { TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { AuthFailureLimiter } from '../auth/failure-limiter.ts';
import { someHash, verifyPassword } from '../auth/password-hash.ts';
import { userKey } from '../auth/users-file.ts';
import { accountLockedWarning, accountLoggedIn, claimAccountGuess, guessedAccount } from '../auth/account-failures.ts';
import type { CounterStore } from '../store/counter-store.ts';
import type { Logger } from '../logging/logger.ts';
import { chainEmailConstraints, describeCertificate, describePeerCertificate, explainUnspecified, type TrustedIssuers } from '../certificates/index.ts';
import { certificateIdentity } from '../policy/certificate-identity.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import type { ListenerConfig } from '../config/schema.ts';
import type { PeerCertificate } from '../sandbox/api/index.ts';
import { countedAddress } from '../connection-limits/counted-address.ts';
import type { Session } from './sessions.ts';

/** A certificate's end (ISO) is past, on the wall clock as the TLS library judges validity. */
const expired = (notAfter: string | null | undefined): boolean => !!notAfter && Date.parse(notAfter) <= Date.now();

export type PasswordOutcome = 'ok' | 'wrong' | 'too-many' | 'account-deferred';

/**
 * One attempt from `ip`: refused outright once over the listener's authFailuresPerIp; deferred while the account is
 * over its authFailuresPerAccount (unless `ip` signed in or logged in as it lately: account-failures.ts); a failure
 * is counted (for the address and the account) and slowed. `store`: the counter store the account counts live in.
 */
export async function checkPassword(limiter: AuthFailureLimiter, listener: ListenerConfig, users: ReadonlyMap<string, string>,
  ip: string, user: string, password: string, accounts?: { store: CounterStore | undefined; log: Logger }): Promise<PasswordOutcome> {
  const counted = countedAddress(ip, listener.limits.ipv6PrefixLength); // as the listener's SMTP AUTH counts it
  const account = guessedAccount('PLAIN', user);
  const store = accounts?.store;
  const limit = { count: listener.limits.authFailuresPerAccount, windowMs: listener.limits.authFailureWindowMs };
  const outcome = await limiter.guess(counted, listener.limits, async () => {
    // The guess takes its place in the account's count before its password is checked (account-failures.ts).
    const guess = account && store ? await claimAccountGuess(store, limit, account, counted) : null;
    // Not a guess: no password is checked, nothing is counted.
    if (guess?.deferred) return 'deferred' as const;
    const right = await verifyPassword(users.get(userKey(user.trim())), password, someHash(users));
    const settled = await guess?.settle(!right).catch(() => ({ reachedLimit: false }));
    if (settled?.reachedLimit && account && accounts) accountLockedWarning(accounts.log, account, limit, { client: ip });
    return right;
  }, (right) => right === false);
  if (outcome.kind === 'uncounted') throw outcome.error;
  if (outcome.kind === 'refused') return 'too-many';
  if (outcome.result === 'deferred') return 'account-deferred';
  if (outcome.result) {
    if (account && store) await accountLoggedIn(store, limit, account, counted).catch(() => undefined);
    return 'ok';
  }
  await sleep(AuthFailureLimiter.delayMs(outcome.failures ?? 0, listener.limits));
  return 'wrong';
}

export interface PresentedCertificate {
  certificate: PeerCertificate;
  identity: string | null;
  via: 'pin' | 'field' | null;
  /** Verified: the fingerprint of the configured CA its chain ends in (TrustedIssuers.anchorOf). */
  anchor: string | null;
  /** The CA list it was verified against. */
  trust: TrustedIssuers;
}

/** The CA list in force at each HTTPS connection's first request (a reload may replace it while the connection lives). */
const firstTrust = new WeakMap<TLSSocket, TrustedIssuers>();

/** The certificate this HTTPS connection presented, and the account the listener would name from it. */
export function presentedCertificate(socket: TLSSocket, listener: ListenerConfig, generation: PolicyGeneration, trust: TrustedIssuers): PresentedCertificate | null {
  if (listener.tls.clientCertificates === 'none') return null;
  const der = socket.getPeerX509Certificate?.()?.raw;
  if (!der) return null;
  const verified = listener.tls.caFiles.length > 0 && socket.authorized;
  let errorCode = verified ? null : listener.tls.caFiles.length === 0 ? 'NO_CA_CONFIGURED' : String(socket.authorizationError ?? 'UNKNOWN');
  if (errorCode === 'UNABLE_TO_GET_CRL') errorCode = trust.explainMissingCrl(der);
  errorCode = explainUnspecified(errorCode, der);
  const described = describePeerCertificate(der, { verified, errorCode });
  if ('unreadable' in described) return null; // grants nothing: the page offers the password sign-in
  let certificate = described;
  // A keep-alive connection's verdict is its handshake's: a CRL loaded since may list the certificate, and its
  // CA may be gone from caFiles since (the CA list of the connection's first request stands for its handshake's;
  // a handshake made before a reload and first read after it was made with another: its root must be in this one).
  const first = firstTrust.get(socket) ?? trust;
  firstTrust.set(socket, first);
  const anchor = verified ? first.anchorOf(socket) : null;
  if (verified && (trust.isRevoked(certificate) || trust.revokesIssuerOf(socket))) certificate = describeCertificate(der, { verified: false, errorCode: 'CERT_REVOKED' });
  else if (verified && (!trust.stillTrusts(first, anchor) || !first.holdRootOf(socket))) certificate = describeCertificate(der, { verified: false, errorCode: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY' });
  // Its handshake's verdict predates the certificate's end: past it, a new handshake would get CERT_HAS_EXPIRED.
  else if (verified && expired(certificate.notAfter)) certificate = describeCertificate(der, { verified: false, errorCode: 'CERT_HAS_EXPIRED' });
  const pins = listener.certificateIdentity.pins ? generation.tables.get(listener.certificateIdentity.pins) : undefined;
  const id = certificateIdentity(listener, certificate, pins, trust, { emailConstraints: () => chainEmailConstraints(socket), issuerRevoked: () => trust.revokesIssuerOf(socket) });
  return { certificate, identity: id.identity, via: id.via, anchor, trust: first };
}

/**
 * Whether a session still stands: its password user is still in the users file with the same hash; its certificate
 * still names the account as a new sign-in with it would. Revoking or unpinning a device (here or with `postern pki` /
 * `postern pins`), or a reload of the listener's certificateIdentity, ends the sessions it no longer names at their next request.
 */
export function sessionStands(s: Session, listener: ListenerConfig, generation: PolicyGeneration, trust: TrustedIssuers): boolean {
  // A password reset (a stolen one replaced) must end the sessions its old value opened, not only a removal.
  if (s.via === 'password') return s.passwordHash !== null && generation.users.get(s.identity) === s.passwordHash;
  const c = s.certificate;
  if (!c?.peer) return false;
  const issuers = c.issuers ?? [];
  // Its handshake's verdict, unless taken back since: past its end, revoked (or a CA of its chain), or its CA out of caFiles.
  const stillVerified = c.peer.verified && !expired(c.notAfter) && !trust.isRevoked(c.peer) && !trust.revokesAnyOf(issuers)
    && (c.trust === undefined || trust.stillTrusts(c.trust, c.anchor ?? null));
  const certificate: PeerCertificate = stillVerified ? c.peer : { ...c.peer, verified: false, verifyError: c.peer.verifyError ?? 'invalid', verifyErrorCode: c.peer.verifyErrorCode ?? 'UNKNOWN' };
  // Then the listener's rules in force, as at a sign-in: the pin table, the field (a reload may map the certificate
  // to another account: that session was not signed in as it), a verified field naming another account than the pin.
  const pins = listener.certificateIdentity.pins ? generation.tables.get(listener.certificateIdentity.pins) : undefined;
  const now = certificateIdentity(listener, certificate, pins, trust, { emailConstraints: () => c.emailConstraints ?? null, issuerRevoked: () => trust.revokesAnyOf(issuers) });
  return now.identity === s.identity;
}

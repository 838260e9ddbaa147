/**
 * Signed-in sessions of the account page, and the one-time downloads of issued PKCS#12 files. Both live in
 * the memory of the one process that serves the page (a restart signs everybody out, and a .p12 not yet
 * downloaded is gone: the user issues another and revokes the first). Idle times and download deadlines are
 * on the monotonic clock: on the wall clock, a step back (NTP, a restored VM) kept an idle session signed in,
 * and a .p12 with its password on offer, for as long as the step.
 */
import { randomBytes } from 'node:crypto';
import type { ChainIssuer, EmailConstraints, TrustedIssuers } from '../certificates/index.ts';
import type { PeerCertificate } from '../sandbox/api/index.ts';

export interface Session {
  id: string;
  /** The account, lowercase. */
  identity: string;
  via: 'password' | 'certificate';
  /** Signed in by password: the users file's hash it was checked against (another hash there since: a changed password ends the session). */
  passwordHash: string | null;
  /** The certificate signed in with (checked again at each request: revoked or unpinned ends the session). */
  certificate: {
    serial: string; pem: string; pinSha256: string; by: 'pin' | 'field';
    /** By field: the CA list it was verified against and the fingerprint of its CA there (taken out of caFiles: the session ends). */
    anchor?: string | null;
    trust?: TrustedIssuers;
    /** The CAs above it in its chain at sign-in (chainIssuers): a CRL that lists one since ends the session. */
    issuers?: readonly ChainIssuer[];
    /** Its end (ISO): signed in by a field, the session ends with it, as a new handshake with it names no account. */
    notAfter?: string | null;
    /**
     * The certificate as the sign-in saw it (its fields, its verdict), and the e-mail name constraints of its chain's
     * CAs: the listener's rules in force are applied to them again at each request (sign-in.ts sessionStands).
     */
    peer?: PeerCertificate;
    emailConstraints?: readonly EmailConstraints[] | null;
  } | null;
  /** Last request, ms on the book's clock (monotonic). */
  seen: number;
  /** Sign-in, ms on the book's clock. */
  started: number;
}

export interface PendingDownload {
  sessionId: string;
  fileName: string;
  p12: Buffer;
  /** What the issued page shows: the device, the certificate, and the password until it has been shown once. */
  shown: { device: string; serial: string; notAfter: string; password: string | null };
  expires: number;
}

const DOWNLOAD_MS = 10 * 60_000;
/** Sessions kept at most: past it the longest idle go first (signing in again and again must not grow memory). */
const MAX_SESSIONS = 10_000;
/**
 * Sessions of one account kept at most (its browsers and devices): past it its own longest idle goes. Without
 * it one user signing in over and over filled MAX_SESSIONS and so signed every other user out.
 */
const MAX_SESSIONS_PER_ACCOUNT = 20;
/**
 * A session's longest life however busy (OWASP ASVS 3.3.2's twelve hours): a stolen cookie kept in use by a
 * request every few minutes would otherwise stand for as long as the password or certificate does.
 */
const MAX_SESSION_MS = 12 * 3600_000;
const token = (): string => randomBytes(32).toString('base64url');

export class SessionBook {
  readonly #sessions = new Map<string, Session>();
  readonly #downloads = new Map<string, PendingDownload>();
  readonly #now: () => number;

  /** `now`: milliseconds on a clock that never goes back (tests pass their own). */
  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  create(identity: string, via: Session['via'], certificate: Session['certificate'], passwordHash: string | null = null): Session {
    this.#sweep();
    const own = [...this.#sessions.values()].filter((o) => o.identity === identity.toLowerCase()).sort((a, b) => a.seen - b.seen);
    for (const o of own.slice(0, own.length - MAX_SESSIONS_PER_ACCOUNT + 1)) this.end(o.id);
    const now = this.#now();
    const s: Session = { id: token(), identity: identity.toLowerCase(), via, passwordHash, certificate, seen: now, started: now };
    this.#sessions.set(s.id, s);
    return s;
  }

  /** The session of this cookie value, unless idle for longer than `idleMs` or older than MAX_SESSION_MS (then it is ended). */
  get(id: string | undefined, idleMs: number, now = this.#now()): Session | null {
    if (!id) return null;
    const s = this.#sessions.get(id);
    if (!s) return null;
    if (now - s.seen > idleMs || now - s.started > MAX_SESSION_MS) {
      this.end(id);
      return null;
    }
    s.seen = now;
    return s;
  }

  /** The session was not ended since (signed out, signed out by another's revocation, replaced): nothing moved on. */
  has(id: string): boolean {
    return this.#sessions.has(id);
  }

  /** Ends every session of `identity` but `keep`; how many ended. */
  endOthers(identity: string, keep: string): number {
    const others = [...this.#sessions.values()].filter((o) => o.identity === identity && o.id !== keep);
    for (const o of others) this.end(o.id);
    return others.length;
  }

  end(id: string): void {
    this.#sessions.delete(id);
    for (const [t, d] of this.#downloads) if (d.sessionId === id) this.#downloads.delete(t);
  }

  /** Keep a .p12 for one download by this session, and its password for one showing; returns its token. */
  offer(sessionId: string, fileName: string, p12: Buffer, shown: PendingDownload['shown']): string {
    const t = token();
    this.#downloads.set(t, { sessionId, fileName, p12, shown, expires: this.#now() + DOWNLOAD_MS });
    return t;
  }

  /** The issued page's facts, the password the first time only; null when not this session's or gone. */
  show(sessionId: string, t: string): PendingDownload['shown'] & { fileName: string } | null {
    const d = this.#downloads.get(t);
    if (!d || d.sessionId !== sessionId || d.expires <= this.#now()) return null;
    const shown = { ...d.shown, fileName: d.fileName };
    d.shown.password = null;
    return shown;
  }

  /** This session's pending download as it stands, nothing spent (no password: that is show's to give once). */
  peek(sessionId: string, t: string): PendingDownload & PendingDownload['shown'] & { fileName: string } | null {
    const d = this.#downloads.get(t);
    if (!d || d.sessionId !== sessionId || d.expires <= this.#now()) return null;
    return { ...d, ...d.shown, password: null };
  }

  /** The download, once: taken by its session, it is gone. */
  take(sessionId: string, t: string): PendingDownload | null {
    const d = this.#downloads.get(t);
    if (!d || d.sessionId !== sessionId) return null;
    this.#downloads.delete(t);
    return d.expires > this.#now() ? d : null;
  }

  #sweep(): void {
    const now = this.#now();
    for (const [t, d] of this.#downloads) if (d.expires <= now) this.#downloads.delete(t);
    // Sessions idle a day are gone whatever the setting (the setting is at most a day).
    for (const [id, s] of this.#sessions) if (now - s.seen > 86400_000 || now - s.started > MAX_SESSION_MS) this.end(id);
    if (this.#sessions.size >= MAX_SESSIONS) {
      const idlest = [...this.#sessions.values()].sort((a, b) => a.seen - b.seen);
      for (const s of idlest.slice(0, this.#sessions.size - MAX_SESSIONS + 1)) this.end(s.id);
    }
  }
}

/**
 * Client certificates about to expire: those seen in the last 30 days (sightings.ts) that named someone
 * (gave an identity, or are a device of ours: a stranger's made-up certificate is nobody's concern) whose notAfter is
 * within `pki.warnDays`. Each is logged as a warning at most once a day, and every recently seen
 * certificate's remaining life is the gauge postern_client_certificate_expiry_seconds{identity,device}.
 * One process per server runs the watch (the single server, or the queue process under `postern serve`).
 */
import type { Logger } from '../logging/logger.ts';
import { metrics } from '../metrics/metrics.ts';
import { crlDeadlines } from '../certificates/index.ts';
import { readSightings, type Sighting } from './sightings.ts';

const DAY = 86400_000;
/** Only certificates seen this recently count: a device retired long ago is nobody's concern. */
export const RECENT_DAYS = 30;

export interface ExpiringCertificate {
  fingerprintSha256: string;
  identity: string;
  device: string;
  subject: string;
  serial: string;
  notAfter: string;
  lastSeen: string;
  listener: string;
  /** Negative once expired. */
  expiresInSeconds: number;
}

export interface DeviceNames { byFingerprint: ReadonlyMap<string, string>; byPin: ReadonlyMap<string, string> }

function describe(s: Sighting, names: DeviceNames, now: number): ExpiringCertificate {
  return {
    fingerprintSha256: s.fingerprintSha256, identity: s.identity ?? s.knownAs ?? '', subject: s.subject, serial: s.serial, notAfter: s.notAfter,
    device: names.byFingerprint.get(s.fingerprintSha256) ?? names.byPin.get(s.pinSha256) ?? '',
    lastSeen: s.lastSeen, listener: s.listener, expiresInSeconds: Math.round((Date.parse(s.notAfter) - now) / 1000),
  };
}

/** The recently seen certificates, soonest expiry first; `expiring` those within warnDays. */
export function recentCertificates(sightings: Iterable<Sighting>, names: DeviceNames, warnDays: number, now = Date.now()): { recent: ExpiringCertificate[]; expiring: ExpiringCertificate[] } {
  // Only certificates that named someone (an identity, now or before, or a device of ours): any client may
  // present a made-up one, expired or about to be, and it must not raise an alert or a daily warning each.
  const recent = [...sightings].filter((s) => now - Date.parse(s.lastSeen) <= RECENT_DAYS * DAY)
    .map((s) => describe(s, names, now)).filter((c) => c.identity !== '' || c.device !== '')
    .sort((a, b) => a.expiresInSeconds - b.expiresInSeconds);
  return { recent, expiring: recent.filter((c) => c.expiresInSeconds <= warnDays * 86400) };
}

export interface ExpiryWatchOptions {
  dataDir: string;
  logger: Logger;
  /** Read at each check: a reload may change it. */
  warnDays: () => number;
  /** Device names for the log and the gauge (deviceNames() in locate.ts). */
  names: () => Promise<DeviceNames>;
  /** Between checks; default one hour (each certificate is still logged at most once a day). */
  intervalMs?: number;
  /**
   * The listeners' crlFiles, read at each check: a CRL past its nextUpdate fails every certificate of its CA
   * (CRL_HAS_EXPIRED), which is otherwise only logged when the file is loaded, months before it runs out.
   */
  crlFiles?: () => readonly string[];
}

export class ExpiryWatch {
  readonly #opts: ExpiryWatchOptions;
  /**
   * When each certificate was last warned about, in monotonic ms (performance.now()). Not the wall clock: set back
   * a week, no day would pass for a week (no warning while the certificate runs out); set forward, each step
   * would be a day.
   */
  readonly #warned = new Map<string, number>();
  #timer: NodeJS.Timeout | null = null;

  constructor(opts: ExpiryWatchOptions) { this.#opts = opts; }

  /** Certificates and CRLs whose last warning is remembered (tests). */
  get remembered(): number { return this.#warned.size; }

  start(): void {
    const tick = (): void => {
      void this.check().catch((err: unknown) => this.#opts.logger.warn({ err }, 'certificate expiry check failed'));
      this.#timer = setTimeout(tick, this.#opts.intervalMs ?? 3600_000);
      this.#timer.unref();
    };
    // Not in the start itself: the first look comes a little later, off the start-up path.
    this.#timer = setTimeout(tick, 10_000);
    this.#timer.unref();
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /**
   * One look: sets the gauge, logs what expires within warnDays and was not logged in the last day. `now` (wall
   * clock) is what certificates' validity is measured against; `elapsed` (monotonic) paces the warnings.
   */
  async check(now = Date.now(), elapsed = performance.now()): Promise<ExpiringCertificate[]> {
    const { recent, expiring } = recentCertificates((await readSightings(this.#opts.dataDir)).values(), await this.#opts.names(), this.#opts.warnDays(), now);
    metrics.clientCertificateExpiry.reset();
    for (const c of recent) metrics.clientCertificateExpiry.set({ identity: c.identity, device: c.device }, c.expiresInSeconds);
    // What is warned about now: the rest of #warned is forgotten at the end (see #forgetOthers).
    const current = new Set<string>();
    for (const c of expiring) {
      current.add(c.fingerprintSha256);
      const last = this.#warned.get(c.fingerprintSha256);
      if (last !== undefined && elapsed - last < DAY) continue;
      this.#warned.set(c.fingerprintSha256, elapsed);
      this.#opts.logger.warn({
        identity: c.identity || null, device: c.device || null, subject: c.subject, serial: c.serial, notAfter: c.notAfter,
        expiresInDays: Math.floor(c.expiresInSeconds / 86400), lastSeen: c.lastSeen, listener: c.listener,
      }, c.expiresInSeconds > 0 ? 'client certificate expires soon' : 'client certificate has expired');
    }
    await this.#checkCrls(now, elapsed, current);
    this.#forgetOthers(current);
    return expiring;
  }

  /**
   * Forget the last warning of what is no longer warned about (renewed, no longer seen, its CRL replaced): kept, a
   * fleet's every certificate stayed for the process's life. One that comes back is warned about again at once.
   */
  #forgetOthers(current: ReadonlySet<string>): void {
    for (const key of this.#warned.keys()) if (!current.has(key)) this.#warned.delete(key);
  }

  /** Sets each CRL's gauge; logs one that runs out within warnDays, or has, at most once a day. */
  async #checkCrls(now: number, elapsed: number, current: Set<string>): Promise<void> {
    metrics.crlNextUpdate.reset();
    for (const file of new Set(this.#opts.crlFiles?.() ?? [])) {
      let crls: Awaited<ReturnType<typeof crlDeadlines>>;
      try {
        crls = await crlDeadlines(file);
      } catch (err) {
        this.#opts.logger.warn({ file, err: { message: (err as Error).message } }, 'CRL unreadable: its expiry not checked');
        // Its CRLs' last warnings are kept: unreadable for a moment (being replaced), it is no day warned about anew.
        for (const key of this.#warned.keys()) if (key.startsWith(`crl ${file} `)) current.add(key);
        continue;
      }
      for (const crl of crls) {
        if (!crl.nextUpdate) continue;
        const left = Math.round((crl.nextUpdate.getTime() - now) / 1000);
        metrics.crlNextUpdate.set({ file, issuer: crl.issuer }, left);
        if (left > this.#opts.warnDays() * 86400) continue;
        const key = `crl ${file} ${crl.issuer}`;
        current.add(key);
        const last = this.#warned.get(key);
        if (last !== undefined && elapsed - last < DAY) continue;
        this.#warned.set(key, elapsed);
        this.#opts.logger.warn({ file, issuer: crl.issuer, nextUpdate: crl.nextUpdate.toISOString(), expiresInDays: Math.floor(left / 86400) },
          left > 0 ? 'CRL expires soon: replace it (postern pki crl) before every certificate of its CA fails'
            : 'CRL has expired: every certificate of its CA fails (CRL_HAS_EXPIRED) until it is replaced');
      }
    }
  }
}

/**
 * The devices of a CA folder as `pki list` and an account page show them: each issued certificate with
 * its revocation and when the server last saw it, expiring ones (seen lately, within warnDays) first.
 */
import { resolve } from 'node:path';
import { pkiPaths } from './layout.ts';
import { readInventory, type DeviceCertificate } from './inventory.ts';
import { readSightings, type Sighting } from './sightings.ts';
import { RECENT_DAYS } from './expiry.ts';

const DAY = 86400_000;

export type DeviceStatus = 'valid' | 'revoked' | 'expired';

export interface DeviceRow extends DeviceCertificate {
  status: DeviceStatus;
  /** Seen in the last 30 days and expiring within warnDays (and not revoked). */
  expiringSoon: boolean;
  /** What the server recorded, or null when it never saw this certificate (or no dataDir was given). */
  seen: Pick<Sighting, 'firstSeen' | 'lastSeen' | 'listener' | 'identity' | 'verdict'> | null;
}

export interface ListDevicesOptions {
  /** The server's data folder, for the sightings; without it `seen` is null. */
  dataDir?: string;
  /** Default 14. */
  warnDays?: number;
  /** Only this identity's certificates (an account page). */
  identity?: string;
  now?: number;
}

export async function listDevices(dir: string, opts: ListDevicesOptions = {}): Promise<DeviceRow[]> {
  const inv = await readInventory(pkiPaths(resolve(dir)));
  const sightings = opts.dataDir ? await readSightings(opts.dataDir) : new Map<string, Sighting>();
  const now = opts.now ?? Date.now();
  const warnMs = (opts.warnDays ?? 14) * DAY;
  const want = opts.identity?.toLowerCase();
  const rows = inv.certificates.filter((c) => !want || c.identity.toLowerCase() === want).map((c): DeviceRow => {
    const s = sightings.get(c.fingerprintSha256);
    const end = Date.parse(c.notAfter);
    const status: DeviceStatus = c.revoked ? 'revoked' : end <= now ? 'expired' : 'valid';
    const recent = !!s && now - Date.parse(s.lastSeen) <= RECENT_DAYS * DAY;
    return {
      ...c, status, expiringSoon: !c.revoked && recent && end - now <= warnMs,
      seen: s ? { firstSeen: s.firstSeen, lastSeen: s.lastSeen, listener: s.listener, identity: s.identity, verdict: s.verdict } : null,
    };
  });
  // Expiring first (soonest first), then by identity, device and issue date.
  return rows.sort((a, b) => Number(b.expiringSoon) - Number(a.expiringSoon)
    || (a.expiringSoon ? Date.parse(a.notAfter) - Date.parse(b.notAfter) : 0)
    || a.identity.localeCompare(b.identity) || a.device.localeCompare(b.device) || a.issuedAt.localeCompare(b.issuedAt));
}

/**
 * One account's devices, as the account page shows and changes them: the certificates the CA issued to the
 * identity (engine/pki inventory) and the keys pinned to it in the listener's pin table, with when the
 * server last saw each. Every change goes through engine/pki (the code `postern pki` / `postern pins` run),
 * so it is written atomically and applied by the running server's reload.
 */
import { X509Certificate, createPublicKey } from 'node:crypto';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Config, ListenerConfig } from '../config/schema.ts';
import {
  addPin, checkName, issueDevice, listDevices, otherAccountsOfKey, revokedCertificateOfKey, listPins, pinOf, pinTableFiles, pinTableOf, pkiDirOf, pkiPaths, readSightings, removePin, revokeDevice,
  type IssuedDevice, type PinEntry, type RevocationReason, type Sighting,
} from '../pki/index.ts';
import type { WhenLocked } from '../pki/atomic-file.ts';

export interface AccountDevice {
  /** `cert-<serial>` for an issued certificate, `pin-<hex>` for a key only pinned: what the page's forms name. */
  id: string;
  kind: 'issued' | 'pinned';
  name: string;
  /** The SPKI pin, mox's base64url. */
  pin: string;
  pinSha256: string;
  serial: string | null;
  /** An issued certificate's SHA-256 fingerprint (hex); null for a key only pinned. */
  fingerprintSha256: string | null;
  notAfter: string | null;
  status: 'valid' | 'revoked' | 'expired' | 'pinned';
  /** Seen lately and expiring within pki.warnDays. */
  expiringSoon: boolean;
  /** The pin table lists its key. */
  pinned: boolean;
  lastSeen: string | null;
  listener: string | null;
}

/**
 * A refusal the page shows as it is (the user's own mistake, nothing internal). `why`: what the administrator
 * is told in the log (at warn), when the cause is theirs to fix (the account's own name), not the user's input.
 */
export class AccountError extends Error {
  readonly why: string | undefined;
  constructor(message: string, why?: string) {
    super(message);
    this.why = why;
  }
}

/**
 * The session of a request ended while the request waited for its turn or for a folder's lock: nothing was changed.
 * Thrown by the `whenLocked` check the page passes to each change below (routes.ts).
 */
export class SessionEnded extends Error {}

export interface AccountContext {
  config: Config;
  listener: ListenerConfig;
}

function pinFile(ctx: AccountContext): string | null {
  if (!ctx.listener.certificateIdentity.pins) return null;
  return pinTableOf(ctx.config, ctx.listener.name).file;
}

function caDir(ctx: AccountContext): string | null {
  try {
    return pkiDirOf(ctx.config);
  } catch {
    return null;
  }
}

/** The server has a CA folder with a CA in it: the page can issue certificates. */
export function canIssue(ctx: AccountContext): boolean {
  const dir = caDir(ctx);
  return !!dir && existsSync(pkiPaths(dir).caCert);
}

const same = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase();

export async function accountDevices(ctx: AccountContext, identity: string): Promise<AccountDevice[]> {
  const dir = caDir(ctx);
  const file = pinFile(ctx);
  const issued = dir ? await listDevices(dir, { identity, dataDir: ctx.config.dataDir, warnDays: ctx.config.pki.warnDays }) : [];
  const pins = file ? (await listPins(file)).filter((p) => same(p.identity, identity)) : [];
  const pinned = new Set(pins.map((p) => p.pinSha256));
  const devices: AccountDevice[] = issued.map((c) => ({
    id: `cert-${c.serial}`, kind: 'issued', name: c.device, pin: Buffer.from(c.pinSha256, 'hex').toString('base64url'), pinSha256: c.pinSha256,
    serial: c.serial, fingerprintSha256: c.fingerprintSha256, notAfter: c.notAfter, status: c.status, expiringSoon: c.expiringSoon, pinned: pinned.has(c.pinSha256),
    lastSeen: c.seen?.lastSeen ?? null, listener: c.seen?.listener ?? null,
  }));
  const covered = new Set(issued.map((c) => c.pinSha256));
  const rest = pins.filter((p) => !covered.has(p.pinSha256));
  if (rest.length) {
    const byPin = latestByPin((await readSightings(ctx.config.dataDir)).values());
    for (const p of rest) {
      const s = byPin.get(p.pinSha256);
      devices.push({
        id: `pin-${p.pinSha256}`, kind: 'pinned', name: p.device ?? '(unnamed)', pin: p.pinBase64Url, pinSha256: p.pinSha256,
        serial: s?.serial ?? null, fingerprintSha256: null, notAfter: s?.notAfter ?? null, status: 'pinned', expiringSoon: false, pinned: true,
        lastSeen: s?.lastSeen ?? null, listener: s?.listener ?? null,
      });
    }
  }
  return devices;
}

/** Sightings are keyed by certificate; a pinned key may have had several: the latest one speaks for it. */
function latestByPin(sightings: Iterable<Sighting>): Map<string, Sighting> {
  const out = new Map<string, Sighting>();
  for (const s of sightings) {
    const had = out.get(s.pinSha256);
    if (!had || s.lastSeen > had.lastSeen) out.set(s.pinSha256, s);
  }
  return out;
}

/** The device `id` of this account, or null: another account's id is as unknown as a made-up one. */
export async function findDevice(ctx: AccountContext, identity: string, id: string): Promise<AccountDevice | null> {
  return (await accountDevices(ctx, identity)).find((d) => d.id === id) ?? null;
}

/**
 * A new certificate from the CA for `identity`. When the listener would not name the account from it
 * (it does not trust the CA by a certificate field), its key is pinned to the account as well.
 */
export async function issueAccountDevice(ctx: AccountContext, identity: string, device: string, days: number, whenLocked?: WhenLocked): Promise<IssuedDevice> {
  const dir = caDir(ctx);
  if (!dir) throw new AccountError('This server has no certificate authority (pki.dir): ask the administrator to set one up.');
  // The certificate carries the identity as CN, and as emailAddress and SAN e-mail when it is an address.
  const field = ctx.listener.certificateIdentity.field;
  const carried = field === 'CN' || ((field === 'emailAddress' || field === 'sanEmail') && identity.includes('@'));
  const byField = carried && ctx.listener.tls.caFiles.some((f) => resolve(f) === pkiPaths(dir).caCert);
  const file = pinFile(ctx);
  if (!byField && !file) throw new AccountError(`Listener ${ctx.listener.name} does not accept certificates of this server's CA: ask the administrator.`);
  refuseUnusableAccountName(identity);
  await refuseDuplicateName(ctx, identity, device.trim());
  const issued = await issueDevice(dir, { identity, device, days, whenLocked }).catch((err: Error) => {
    throw /^device "/.test(err.message) ? new AccountError(err.message) : err;
  });
  if (!byField) await addPin(file!, { identity, certificateOrPin: issued.certPem, device });
  return issued;
}

/** A certificate, public key (PEM) or pin of the user's own making, pinned to the account (mox's way). */
export async function addAccountKey(ctx: AccountContext, identity: string, device: string, given: string | Buffer, whenLocked?: WhenLocked): Promise<PinEntry> {
  const file = pinFile(ctx);
  if (!file) throw new AccountError(`Listener ${ctx.listener.name} has no pin table (certificateIdentity.pins): only issued certificates can be added.`);
  const input = (typeof given === 'string' ? given : uploadedText(given)).trim();
  if (!input) throw new AccountError('Paste a certificate, a public key or a pin.');
  // Whatever else comes with it: a public key pasted after its private key was taken from the private key.
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(input)) throw new AccountError('That is a private key: never paste it anywhere. Paste the certificate or the public key.');
  refuseUnusableAccountName(identity);
  await refuseDuplicateName(ctx, identity, device);
  try {
    // A certificate or public key as it came (not its pin): pinOf refuses a key too weak to name the account.
    await refuseAnotherAccountsKey(ctx, identity, pinOf(input));
    return await addPin(file, { identity, certificateOrPin: input, device, whenLocked });
  } catch (err) {
    if (err instanceof AccountError || err instanceof SessionEnded) throw err;
    // addPin names the account a key is already pinned for: maybe another user's; say less.
    if (/already pinned/.test((err as Error).message)) throw new AccountError('That key is already registered.');
    // A message naming a file is the server's problem (logged as such); the rest is about the input.
    if ((err as Error).message.startsWith('/')) throw err;
    throw new AccountError(`Not added: ${(err as Error).message}`);
  }
}

/**
 * The key of a certificate this server's CA issued to another account (certificates are public): pinned here
 * it would name this account whenever that certificate stops verifying (expired), so its owner's device
 * would sign in as this account. So is a key another account has pinned in the pin table of another listener or
 * policy service (pinned in this one too, its owner's device would sign in here as this account), and the key of
 * a certificate the server has seen name another account (a CA of `caFiles` other than pki.dir's, whose issued
 * certificates the inventory does not list: a sighting takes a handshake, so only the key's holder makes one).
 * Refused as any key already registered, without saying whose it is.
 */
async function refuseAnotherAccountsKey(ctx: AccountContext, identity: string, pinSha256: string): Promise<void> {
  if ((await otherAccountsOfKey(ctx.config, identity, pinSha256)).length) throw new AccountError('That key is already registered.');
  const dir = caDir(ctx);
  // The key of a device revoked (lost, stolen): pinned, it would log in again whatever the CRL says.
  if (dir && await revokedCertificateOfKey(dir, pinSha256)) throw new AccountError('That key\'s certificate was revoked: it cannot be registered again. Issue a new certificate for the device.');
}

/** An uploaded file as PEM text: PEM as it is, a DER certificate or DER public key converted. */
function uploadedText(bytes: Buffer): string {
  const text = bytes.toString('latin1');
  if (text.includes('-----BEGIN')) return text;
  try {
    return new X509Certificate(bytes).toString();
  } catch { /* not a DER certificate */ }
  try {
    return createPublicKey({ key: bytes, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }).toString();
  } catch {
    throw new AccountError('The file is neither a certificate nor a public key (PEM or DER).');
  }
}

/**
 * An account whose name a certificate's subject and a pin table's line cannot carry (a users-file name with a space
 * in it, say) has no device to add: said to the user as the administrator's to fix, not as a server error (issuing
 * failed with a 500), and the rule it breaks logged.
 */
function refuseUnusableAccountName(identity: string): void {
  try {
    checkName('identity', identity.trim());
  } catch (err) {
    throw new AccountError(`Devices cannot be added to the account "${identity}": its name has characters a certificate cannot carry `
      + '(only letters, digits and . _ % + @ - are allowed). Ask the administrator to rename the account.',
      `a device cannot be added to this account, its name cannot be put in a certificate or a pin table: ${(err as Error).message}`);
  }
}

async function refuseDuplicateName(ctx: AccountContext, identity: string, device: string): Promise<void> {
  const live = (await accountDevices(ctx, identity)).filter((d) => d.status === 'valid' || d.status === 'pinned');
  if (live.some((d) => d.name === device)) throw new AccountError(`You already have a device named "${device}": choose another name, or revoke that one first.`);
}

export interface DeviceChange { device: AccountDevice; revoked: boolean; unpinned: boolean }

/**
 * Revokes an issued certificate (the CRL is rewritten) and unpins its key, or removes a pinned key: either
 * way the next handshake with it names no account. A pin matches whatever the chain verdict, so a revoked
 * certificate must lose its pin too.
 */
export async function retireAccountDevice(ctx: AccountContext, device: AccountDevice, reason: RevocationReason, whenLocked?: WhenLocked): Promise<DeviceChange> {
  let revoked = false;
  if (device.kind === 'issued' && device.status === 'valid') {
    const dir = caDir(ctx);
    if (!dir) throw new AccountError('This server has no certificate authority (pki.dir) any more.');
    revoked = (await revokeDevice(dir, { serial: device.serial! }, { reason, whenLocked })).revoked.length > 0;
  }
  let unpinned = false;
  const file = pinFile(ctx);
  // A revoked certificate leaves every pin table, as with postern pki revoke: another listener's, or a policy
  // service's (Postfix checks no CRL), would still name its account. So does a key removed here: pinned for the
  // account in another table too (postern pins add --listener), a stolen laptop's went on sending mail there.
  // The page's own table first: the change checked against the session (whenLocked) is that one.
  const files = new Set<string>(device.pinned && file ? [file] : []);
  if (revoked || device.pinned) for (const f of pinTableFiles(ctx.config)) files.add(f);
  // Once revoked, its pins go whatever happens to the session (the revocation stands); else the first change is checked.
  for (const f of files) if ((await removePin(f, { pin: device.pinSha256 }, revoked || unpinned ? undefined : whenLocked)).length) unpinned = true;
  if (!revoked && !unpinned) throw new AccountError(`Device "${device.name}" is already ${device.status}.`);
  return { device, revoked, unpinned };
}

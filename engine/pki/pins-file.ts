/**
 * A listener's pin table (`certificateIdentity.pins`, postfix format) as a list of devices: `pin account
 * [more senders]` lines, each after a `# device: NAME; added DATE` comment that names the device. Adding
 * and removing rewrite the file atomically (mox's `config tlspubkey add/rm`), and the server's reload
 * applies the change to the next handshakes. Other lines and comments are kept as they are.
 */
import { X509Certificate, createHash, createPublicKey } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { normalizePin, spkiFacts, strongEnoughKey, MIN_RSA_BITS } from '../certificates/index.ts';
import { readIfExists, withFolderLock, writeFileAtomic, type WhenLocked } from './atomic-file.ts';
import { certificateFacts } from './certificate-facts.ts';
import { checkName } from './issue.ts';

export interface PinEntry {
  /** Canonical lowercase hex. */
  pinSha256: string;
  /** mox's form (base64url), as the file is written. */
  pinBase64Url: string;
  identity: string;
  /** Further senders on the line (see senderLogin). */
  senders: string[];
  device: string | null;
  added: string | null;
  /** 1-based line of the entry. */
  line: number;
  /** 1-based last line: the entry's value may go on in lines that start with whitespace (postmap's continuation). */
  lastLine: number;
}

const DEVICE_COMMENT = /^#\s*device:\s*([^;]*?)\s*(?:;\s*added\s+(\S+))?\s*$/;
const ENTRY = /^(\S+)\s+(.*\S)\s*$/;

function parse(file: string, text: string): { lines: string[]; entries: PinEntry[] } {
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const entries: PinEntry[] = [];
  for (let i = 0; i < lines.length; i++) {
    const first = i;
    let raw = lines[i]!.replace(/\r$/, '');
    if (/^\s*(#|$)/.test(raw)) continue;
    // Continuation lines, as the server's table reads them (lookup-tables.ts).
    while (i + 1 < lines.length && /^\s+\S/.test(lines[i + 1]!) && !/^\s*#/.test(lines[i + 1]!)) raw += lines[++i]!.replace(/\r$/, '');
    const m = ENTRY.exec(raw);
    if (!m) throw new Error(`${file}:${first + 1}: expected "pin account", not a pin table line`);
    const hex = normalizePin(m[1]!);
    if (!hex) continue; // a fingerprint-shaped key of another length, or a plain key: not ours to manage
    const [identity = '', ...senders] = m[2]!.split(/[\s,]+/).filter(Boolean);
    const comment = first > 0 ? DEVICE_COMMENT.exec(lines[first - 1]!) : null;
    entries.push({
      pinSha256: hex, pinBase64Url: Buffer.from(hex, 'hex').toString('base64url'), identity, senders,
      device: comment?.[1] && comment[1] !== '-' ? comment[1] : null, added: comment?.[2] ?? null, line: first + 1, lastLine: i + 1,
    });
  }
  return { lines, entries };
}

export async function listPins(file: string): Promise<PinEntry[]> {
  const text = await readIfExists(file);
  return text === null ? [] : parse(file, text).entries;
}

export interface AddPinOptions {
  identity: string;
  /** A certificate or public key (PEM), or a pin in any accepted spelling (hex, colon hex, base64, base64url, sha256//…). */
  certificateOrPin: string;
  device?: string;
  /** Further senders the identity may use with this key. */
  senders?: string[];
  /** Once the pin table folder's lock is held: throws to add nothing (see WhenLocked). */
  whenLocked?: WhenLocked;
}

/** Adds a pin line; refuses a pin that is already in the table (whoever it names). */
export async function addPin(file: string, opts: AddPinOptions): Promise<PinEntry> {
  const identity = checkName('identity', opts.identity.trim()).toLowerCase();
  const device = opts.device === undefined ? null : checkName('device', opts.device.trim());
  const hex = pinOf(opts.certificateOrPin);
  return withFolderLock(dirname(file), async () => {
    const text = (await readIfExists(file)) ?? '';
    const { lines, entries } = parse(file, text);
    const taken = entries.find((e) => e.pinSha256 === hex);
    if (taken) throw new Error(`${file}:${taken.line}: that key is already pinned, for ${taken.identity}${taken.device ? ` (device ${taken.device})` : ''}`);
    const added = new Date().toISOString().slice(0, 10);
    const pin64 = Buffer.from(hex, 'hex').toString('base64url');
    lines.push(`# device: ${device ?? '-'}; added ${added}`, `${pin64} ${[identity, ...(opts.senders ?? [])].join(' ')}`);
    await writeFileAtomic(file, lines.join('\n') + '\n', await modeOf(file));
    return { pinSha256: hex, pinBase64Url: pin64, identity, senders: opts.senders ?? [], device, added, line: lines.length, lastLine: lines.length };
  }, opts.whenLocked);
}

export type RemovePinSelector = { pin: string } | { identity: string; device?: string };

/** Removes the matching pin lines (and their device comments); returns what went. `whenLocked`: see WhenLocked. */
export async function removePin(file: string, selector: RemovePinSelector, whenLocked?: WhenLocked): Promise<PinEntry[]> {
  // A weak key pinned before it was refused can still be removed by its certificate.
  const hex = 'pin' in selector ? pinOf(selector.pin, { refuseWeak: false }) : null;
  return withFolderLock(dirname(file), async () => {
    const text = await readIfExists(file);
    if (text === null) throw new Error(`${file}: no such pin table`);
    const { lines, entries } = parse(file, text);
    const gone = entries.filter((e) => (hex ? e.pinSha256 === hex
      : 'identity' in selector && e.identity.toLowerCase() === selector.identity.toLowerCase() && (selector.device === undefined || e.device === selector.device)));
    if (!gone.length) return [];
    const drop = new Set<number>();
    for (const e of gone) {
      for (let l = e.line; l <= e.lastLine; l++) drop.add(l - 1);
      if (DEVICE_COMMENT.test(lines[e.line - 2] ?? '')) drop.add(e.line - 2);
    }
    await writeFileAtomic(file, lines.filter((_, i) => !drop.has(i)).map((l) => `${l}\n`).join(''), await modeOf(file));
    return gone;
  }, whenLocked);
}

/**
 * The SPKI SHA-256 (hex) of a certificate or public key (PEM), or of a pin in any spelling. A key too weak to
 * trust is refused here (unless `refuseWeak: false`, to find one), so the administrator learns it at once: its
 * pin would never name the account (engine/policy/certificate-identity.ts).
 */
export function pinOf(input: string, { refuseWeak = true } = {}): string {
  const text = input.trim();
  if (text.includes('-----BEGIN CERTIFICATE-----')) {
    const pin = certificateFacts(text).pin.sha256;
    if (refuseWeak) strongEnough(spkiFacts(new X509Certificate(text).publicKey.export({ type: 'spki', format: 'der' })));
    return pin;
  }
  if (text.includes('-----BEGIN PUBLIC KEY-----')) {
    let spki: Buffer;
    try {
      spki = createPublicKey(text).export({ type: 'spki', format: 'der' });
    } catch (err) {
      throw new Error(`not a readable public key: ${(err as Error).message}`);
    }
    // The same DER read as a certificate's key (x509-fields.ts) gives its type and size.
    if (refuseWeak) strongEnough(spkiFacts(spki));
    return createHash('sha256').update(spki).digest('hex');
  }
  const hex = text.includes('-----BEGIN') ? null : normalizePin(text);
  if (!hex) throw new Error('not a certificate or public key (PEM) nor a SHA-256 public-key pin (hex, colon hex, base64 or base64url)');
  return hex;
}

function strongEnough(key: { keyType: string; keyBits: number }): void {
  if (!strongEnoughKey(key)) throw new Error(`a ${key.keyBits}-bit ${key.keyType} key is too weak to pin (RSA needs ${MIN_RSA_BITS} bits, EC a curve of 224 bits or more)`);
}

async function modeOf(file: string): Promise<number> {
  return stat(file).then((s) => s.mode & 0o777, () => 0o644);
}

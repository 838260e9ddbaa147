/**
 * `postern pins add | list | remove | learn`: a listener's pin table (certificateIdentity.pins), as mox's
 * `config tlspubkey add/list/rm`. Whole-file atomic writes; a running server's reload applies them.
 * `learn` takes the certificate of a connection the server saw (by queue id, or by connection id from the
 * sightings or the log) and shows what it will add before adding it.
 */
import { createReadStream, existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import type { Config } from '../config/schema.ts';
import { refusedReloadWarning } from '../reload/reload-status.ts';
import {
  addPin, listPins, otherAccountsOfKey, pinOf, pinTableOf, readSightings, removePin, revokedCertificateOfKey, type KeyClaim, type RemovePinSelector,
} from '../pki/index.ts';
import { Spool } from '../spool/spool.ts';
import { SpoolSet } from '../cluster/spool-set.ts';
import { columns, configOf, guarded, print, printJson } from './pki.ts';
import { boundedName } from '../certificates/index.ts';

interface PinsOptions { config?: string; listener?: string; json?: boolean }

/** A certificate file's text, or the argument itself (a pin). */
async function certificateOrPin(arg: string): Promise<string> {
  return existsSync(arg) ? readFile(arg, 'utf8') : arg;
}

/**
 * A key whose certificate pki.dir revoked (a lost laptop's, learnt from the connection its thief made since): a pin
 * names the account whatever the CRL says, so pinning it would undo the revocation. Said on stderr.
 */
async function refusedAsRevoked(config: Config, pinSha256: string): Promise<boolean> {
  const revoked = config.pki.dir ? await revokedCertificateOfKey(config.pki.dir, pinSha256) : null;
  if (!revoked) return false;
  process.stderr.write(`postern: that key's certificate (serial ${revoked.serial}, ${revoked.identity}, device ${revoked.device}) was revoked on ${revoked.revoked!.at} (${revoked.revoked!.reason}): pinned, it would log in again; issue a new certificate instead\n`);
  return true;
}

/**
 * A key that already names another account (otherAccountsOfKey: pinned in any pin table, issued by pki.dir, seen
 * naming it): pinned for `identity` too, that account's device would sign in as `identity`, as the account page
 * refuses. Refused here too, naming them, unless `force` (a device handed over: then remove the old pin as well);
 * with it, pinned with the same lines as a warning. Said on stderr; returns the claims when the pin may go on.
 */
async function claimsOfOthers(config: Config, file: string, identity: string, pinSha256: string, force: boolean | undefined): Promise<KeyClaim[] | null> {
  // A pin in the table being added to is addPin's to refuse (any account, --force or not): it names the line.
  const claims = (await otherAccountsOfKey(config, identity, pinSha256)).filter((c) => c.pinTable !== file);
  if (!claims.length) return claims;
  const lines = claims.map((c) => `  ${c.account}: ${c.where}\n`).join('');
  const accounts = [...new Set(claims.map((c) => c.account))].join(', ');
  if (!force) {
    process.stderr.write(`postern: that key already names another account:\n${lines}pinned for ${identity} too, the device of ${accounts} would sign in as ${identity}; `
      + 'if the device is now theirs, remove it from the other account (postern pins remove, postern pki revoke) and run again, or pass --force\n');
    return null;
  }
  process.stderr.write(`postern: warning: that key also names another account (pinned anyway: --force):\n${lines}`);
  return claims;
}

export function pinsAddCommand(identity: string, certOrPin: string, opts: PinsOptions & { device?: string; sender?: string[]; force?: boolean }): Promise<number> {
  return guarded(async () => {
    const config = configOf(opts);
    const table = pinTableOf(config, opts.listener);
    const given = await certificateOrPin(certOrPin);
    const pinSha256 = pinOf(given);
    if (await refusedAsRevoked(config, pinSha256)) return 1;
    const others = await claimsOfOthers(config, table.file, identity.trim(), pinSha256, opts.force);
    if (!others) return 1;
    const entry = await addPin(table.file, { identity, certificateOrPin: given, device: opts.device, senders: opts.sender });
    if (opts.json) printJson({ table: table.table, file: table.file, listeners: table.listeners, added: entry, otherAccounts: others });
    else print(`${table.file}: pinned ${entry.pinBase64Url} for ${entry.identity}${entry.device ? ` (device ${entry.device})` : ''}; listeners ${table.listeners.join(', ')} apply it at their reload`);
    return 0;
  });
}

export function pinsListCommand(opts: PinsOptions): Promise<number> {
  return guarded(async () => {
    const config = configOf(opts);
    const table = pinTableOf(config, opts.listener);
    const pins = await listPins(table.file);
    const seen = await readSightings(config.dataDir);
    const lastSeen = new Map<string, string>();
    for (const s of seen.values()) if ((lastSeen.get(s.pinSha256) ?? '') < s.lastSeen) lastSeen.set(s.pinSha256, s.lastSeen);
    if (opts.json) {
      printJson({ table: table.table, file: table.file, listeners: table.listeners, pins: pins.map((p) => ({ ...p, lastSeen: lastSeen.get(p.pinSha256) ?? null })) });
      return 0;
    }
    if (!pins.length) {
      print(`${table.file}: no pins`);
      return 0;
    }
    print(columns([['IDENTITY', 'DEVICE', 'PIN (SHA-256 SPKI, base64url)', 'ADDED', 'LAST SEEN'],
      ...pins.map((p) => [p.identity, p.device ?? '-', p.pinBase64Url, p.added ?? '-', lastSeen.get(p.pinSha256)?.slice(0, 16).replace('T', ' ') ?? 'never'])]));
    return 0;
  });
}

export function pinsRemoveCommand(what: string, opts: PinsOptions & { device?: string }): Promise<number> {
  return guarded(async () => {
    const config = configOf(opts);
    const table = pinTableOf(config, opts.listener);
    const input = await certificateOrPin(what);
    // A PEM or something pin-shaped is a pin; anything else an identity.
    const selector: RemovePinSelector = opts.device !== undefined || !(input.includes('-----BEGIN') || /^[A-Za-z0-9+/=_:-]{40,}$/.test(input.replace(/^sha256\/\//i, '')))
      ? { identity: what, device: opts.device } : { pin: input };
    const gone = await removePin(table.file, selector);
    const refused = gone.length ? await refusedReloadWarning(config.dataDir, 'the pins from before this removal') : null;
    if (refused) process.stderr.write(refused);
    if (opts.json) printJson({ table: table.table, file: table.file, removed: gone });
    else if (!gone.length) print(`${table.file}: nothing matched ${what}`);
    else for (const p of gone) print(`${table.file}: removed ${p.pinBase64Url} of ${p.identity}${p.device ? ` (device ${p.device})` : ''}`);
    return gone.length ? 0 : 1;
  });
}

interface Learned { pinSha256: string; subject: string | null; identity: string | null; source: string }

export function pinsLearnCommand(id: string, identity: string | undefined, opts: PinsOptions & { device?: string; log?: string; yes?: boolean; force?: boolean }): Promise<number> {
  return guarded(async () => {
    const config = configOf(opts);
    const table = pinTableOf(config, opts.listener);
    const found = await findConnection(id, config.dataDir, opts.log);
    if (!found) throw new Error(`no client certificate found for ${id}: not a queued message, not a connection in the sightings${opts.log ? ` nor in ${opts.log}` : ' (give the log with --log FILE, or - for stdin)'}`);
    const account = identity ?? found.identity;
    if (!account) throw new Error(`${id}: the certificate named no account; give one: postern pins learn ${id} ACCOUNT`);
    const pin64 = Buffer.from(found.pinSha256, 'hex').toString('base64url');
    const plan = { table: table.table, file: table.file, pin: pin64, identity: account, device: opts.device ?? null, subject: found.subject, from: found.source };
    if (!opts.yes) {
      const others = (await otherAccountsOfKey(config, account.trim(), found.pinSha256)).filter((c) => c.pinTable !== table.file);
      const taken = others.length ? `\n  the key already names ${others.map((c) => `${c.account} (${c.where})`).join(', ')}: adding it needs --force` : '';
      if (opts.json) printJson({ ...plan, added: false, otherAccounts: others, hint: `run again with --yes${others.length ? ' --force' : ''} to add it` });
      else print(`Would add to ${table.file}:\n  ${pin64} ${account}${opts.device ? `   (device ${opts.device})` : ''}\n  certificate ${found.subject ?? '(subject unknown)'}, from ${found.source}${taken}\nRun again with --yes to add it.`);
      return opts.json ? 0 : 2;
    }
    if (await refusedAsRevoked(config, found.pinSha256)) return 1;
    const others = await claimsOfOthers(config, table.file, account.trim(), found.pinSha256, opts.force);
    if (!others) return 1;
    const entry = await addPin(table.file, { identity: account, certificateOrPin: found.pinSha256, device: opts.device });
    if (opts.json) printJson({ ...plan, added: true, entry, otherAccounts: others });
    else print(`${table.file}: pinned ${entry.pinBase64Url} for ${account} (certificate ${found.subject ?? 'of ' + id}, from ${found.source})`);
    return 0;
  });
}

/** The certificate of a queued message, or of a connection (sightings, then the log's "TLS established" line). */
async function findConnection(id: string, dataDir: string, log: string | undefined): Promise<Learned | null> {
  if (Spool.isId(id)) {
    const spools = new SpoolSet(new Spool(join(dataDir, 'spool')));
    try {
      const env = await spools.readEnvelope(id).catch(() => null);
      const c = env?.session.clientCertificate;
      if (c) return { pinSha256: c.pinSha256, subject: boundedName(c.subject), identity: env!.session.authenticatedUser, source: `queued message ${id}` };
    } finally {
      spools.close();
    }
  }
  for (const s of (await readSightings(dataDir)).values()) {
    if (s.lastConnection === id) return { pinSha256: s.pinSha256, subject: boundedName(s.subject), identity: s.identity, source: `connection ${id} (last seen ${s.lastSeen})` };
  }
  if (!log) return null;
  const lines = createInterface({ input: log === '-' ? process.stdin : createReadStream(log), crlfDelay: Infinity });
  let hit: Learned | null = null;
  for await (const line of lines) {
    if (!line.includes(id) || !line.includes('TLS established')) continue;
    try {
      const rec = JSON.parse(line) as { cid?: string; msg?: string; identity?: string | null; cert?: { subject?: string; pin?: string } | null };
      if (rec.cid !== id || rec.msg !== 'TLS established' || !rec.cert?.pin) continue;
      hit = { pinSha256: Buffer.from(rec.cert.pin, 'base64url').toString('hex'), subject: rec.cert.subject === undefined ? null : boundedName(rec.cert.subject), identity: rec.identity ?? null, source: `connection ${id} in ${log === '-' ? 'the log on stdin' : log}` };
    } catch { /* not a JSON log line */ }
  }
  return hit;
}

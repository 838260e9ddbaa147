/**
 * `postern pki init | issue | list | revoke | crl`: the device-certificate life cycle (engine/pki) from the
 * command line. Each reads the configuration for the CA folder (`pki.dir`) and the data folder (last seen);
 * none needs a running server, and each is safe while one runs (whole-file atomic writes, which its
 * reload applies). `--json` prints one JSON document instead of text.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadStartConfig } from '../config/start-config.ts';
import { refusedReloadWarning } from '../reload/reload-status.ts';
import { openToOthers } from '../spool/data-dir-lock.ts';
import { ConfigError } from '../config/config-error.ts';
import type { Config } from '../config/schema.ts';
import {
  crlCopies, initCa, issueDevice, listDevices, unloadedCrls, parseKeyType, pkiPaths, parseReason, pinTableFiles, pkiDirOf, refreshCrl, removePin, revokeDevice,
  type CertificateFacts, type RevokeSelector,
} from '../pki/index.ts';

/** Configuration and I/O problems: a message on stderr and exit status 1, like the other commands. */
export async function guarded(fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    process.stderr.write(`postern: ${err instanceof ConfigError ? `configuration refused:\n${err.message}` : (err as Error).message}\n`);
    return 1;
  }
}

export const print = (text: string): void => { process.stdout.write(text.endsWith('\n') ? text : `${text}\n`); };
export const printJson = (value: unknown): void => print(JSON.stringify(value, null, 2));

export interface CommonOptions { config?: string; dir?: string; json?: boolean }

export function configOf(opts: { config?: string }): Config {
  return loadStartConfig({ configPath: opts.config }).config;
}

function days(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${what} must be a positive whole number of days, got "${text}"`);
  return n;
}

/** A path as one shell word, to paste. */
const shellWord = (text: string): string => (/^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replaceAll("'", "'\\''")}'`);

export function pkiInitCommand(opts: { dir: string; name?: string; days?: string; key?: string; crlDays?: string; json?: boolean }): Promise<number> {
  return guarded(async () => {
    const r = await initCa(opts.dir, {
      name: opts.name, days: days(opts.days, '--days'), keyType: opts.key ? parseKeyType(opts.key) : undefined, crlDays: days(opts.crlDays, '--crl-days'),
    });
    if (opts.json) {
      printJson({ dir: r.paths.dir, caCert: r.paths.caCert, caKey: r.paths.caKey, crl: r.paths.crl, inventory: r.paths.inventory, ca: r.ca, crlInfo: r.crl, configLines: r.configLines });
      return 0;
    }
    print([
      `CA "${r.ca.subject}" in ${r.paths.dir}`,
      `  certificate  ${r.paths.caCert}  (valid until ${r.ca.notAfter})`,
      `  private key  ${r.paths.caKey}  (mode 0600: keep it there, back it up offline)`,
      `  CRL          ${r.paths.crl}  (number ${r.crl.number}, next update ${r.crl.nextUpdate})`,
      `  SHA-256      ${r.ca.fingerprint.sha256Colon}`,
      '',
      'Add to postern.yaml (the listener that takes client certificates):',
      '',
      r.configLines.replace(/^/gm, '  ').trimEnd(),
      '',
      // With --dir: run as printed, before postern.yaml names the CA, a bare `pki issue` found another CA (npm start's
      // data/pki, from a clone's folder) and issued from it without a word, or none at all.
      `Then: postern pki issue user@example.com --device laptop --dir ${shellWord(r.paths.dir)}   (or -c postern.yaml, once it has pki.dir)`,
    ].join('\n'));
    return 0;
  });
}

export interface IssueCommandOptions extends CommonOptions {
  device?: string; days?: string; key?: string; email?: string[]; p12PasswordFile?: string; legacyP12?: boolean; out?: string;
}

export function pkiIssueCommand(identity: string, opts: IssueCommandOptions): Promise<number> {
  return guarded(async () => {
    const config = configOf(opts);
    const dir = pkiDirOf(config, opts.dir);
    const password = opts.p12PasswordFile ? (await readFile(opts.p12PasswordFile, 'utf8')).split(/\r?\n/)[0]! : undefined;
    if (opts.p12PasswordFile && !password) throw new Error(`${opts.p12PasswordFile}: the first line (the password) is empty`);
    // The device's files, for the administrator to hand over; the key is not kept anywhere else. Checked before
    // anything is issued: in a folder another user owns or may write (devices/ made beforehand by the server's
    // user, who may write the CA folder) that user could swap or remove them before they are handed over.
    const out = resolve(opts.out ?? join(dir, 'devices'));
    await mkdir(out, { recursive: true, mode: 0o700 });
    const open = openToOthers(out, 'this user');
    if (open) throw new Error(`--out ${out}: ${open}: the private key and .p12 written there could be swapped or removed by that user; give a folder of your own (nothing was issued)`);
    const d = await issueDevice(dir, {
      identity, device: opts.device, days: days(opts.days, '--days'), keyType: opts.key ? parseKeyType(opts.key) : undefined,
      emails: opts.email, p12Password: password, p12Encryption: opts.legacyP12 ? 'legacy' : 'modern',
    });
    const base = join(out, `${d.record.identity}-${d.record.device}-${d.record.serial.slice(0, 8)}`);
    const files = { cert: `${base}.crt`, key: `${base}.key`, pem: `${base}.pem`, p12: `${base}.p12` };
    const secret = async (file: string, data: string | Buffer): Promise<void> => {
      await writeFile(file, data, { mode: 0o600, flag: 'wx' });
      await chmod(file, 0o600);
    };
    await writeFile(files.cert, d.certPem + d.caPem, { mode: 0o644, flag: 'wx' });
    await secret(files.key, d.keyPem);
    await secret(files.pem, d.keyPem + d.certPem + d.caPem);
    await secret(files.p12, d.p12);
    const settings = mailClientSettings(config);
    if (opts.json) {
      printJson({
        certificate: d.record, facts: d.facts, files, p12Password: password ? undefined : d.p12Password,
        p12Encryption: opts.legacyP12 ? 'legacy' : 'modern', crl: d.crl, mailClient: settings,
      });
      return 0;
    }
    print([
      `Issued ${d.record.identity} (device ${d.record.device}), serial ${d.record.serial}, valid until ${d.record.notAfter}`,
      `  subject      ${d.facts.subject}`,
      `  certificate  ${files.cert}`,
      `  private key  ${files.key}  (0600)`,
      `  key + cert   ${files.pem}  (0600: openssl s_client -cert, swaks --tls-cert/--tls-key, Python load_cert_chain)`,
      `  PKCS#12      ${files.p12}  (0600: Thunderbird, macOS/iOS Mail, K-9/Thunderbird for Android${opts.legacyP12 ? '; legacy 3DES/SHA-1 encryption' : ''})`,
      password ? '  PKCS#12 password: from ' + opts.p12PasswordFile : `  PKCS#12 password: ${d.p12Password}   (shown once)`,
      '',
      ...factLines(d.facts),
      '',
      'Mail client settings:',
      ...settings.map((s) => `  ${s.listener}: server ${s.server}, port ${s.port}, ${s.security}, authentication "TLS certificate" (SASL EXTERNAL${s.autoLogin ? ' or none: the certificate logs in' : ''}), user ${d.record.identity}`),
      '',
      'Hand the .p12 and its password to the device separately; delete the key files here once it is installed.',
    ].join('\n'));
    return 0;
  });
}

/** Fingerprints and pins in the forms Postfix, mox and curl take. */
export function factLines(f: CertificateFacts): string[] {
  return [
    'Fingerprints (Postfix check_ccert_access / smtpd_tls_fingerprint_digest):',
    `  SHA-256      ${f.fingerprint.sha256Colon}`,
    `  SHA-1        ${f.fingerprint.sha1Colon}`,
    `  MD5          ${f.fingerprint.md5Colon}`,
    'Public-key pin (SPKI SHA-256):',
    `  mox          ${f.pin.sha256Base64Url}   (mox config tlspubkey, postern pins)`,
    `  Postfix      ${f.pin.sha256Colon}`,
    `  curl         sha256//${f.pin.sha256Base64}`,
  ];
}

interface ClientSetting { listener: string; server: string; port: number; security: string; autoLogin: boolean }

function mailClientSettings(config: Config): ClientSetting[] {
  // The listeners where a certificate logs in (EXTERNAL or autoLogin); else every one that asks for one.
  const asking = config.listeners.filter((l) => l.tls.clientCertificates !== 'none');
  const login = asking.filter((l) => l.auth.mechanisms.includes('EXTERNAL') || l.certificateIdentity.autoLogin);
  return (login.length ? login : asking).map((l) => ({
    listener: l.name, server: config.hostname, port: Number(l.listen.slice(l.listen.lastIndexOf(':') + 1)),
    security: l.tls.mode === 'implicit' ? 'SSL/TLS' : 'STARTTLS', autoLogin: l.certificateIdentity.autoLogin,
  }));
}

export function pkiListCommand(opts: CommonOptions & { identity?: string }): Promise<number> {
  return guarded(async () => {
    const config = configOf(opts);
    const dir = pkiDirOf(config, opts.dir);
    const rows = await listDevices(dir, { dataDir: config.dataDir, warnDays: config.pki.warnDays, identity: opts.identity });
    if (opts.json) {
      printJson({ dir, warnDays: config.pki.warnDays, certificates: rows });
      return 0;
    }
    if (!rows.length) {
      print(`No certificates issued from ${dir} yet (postern pki issue IDENTITY --device NAME).`);
      return 0;
    }
    const table = rows.map((r) => [
      r.expiringSoon ? '!' : ' ', r.identity, r.device, r.serial, r.notAfter.slice(0, 10),
      r.status === 'revoked' ? `revoked ${r.revoked!.at.slice(0, 10)} (${r.revoked!.reason})` : r.status,
      r.seen ? `${r.seen.lastSeen.slice(0, 16).replace('T', ' ')} on ${r.seen.listener} (${r.seen.verdict})` : 'never',
    ]);
    print(columns([[' ', 'IDENTITY', 'DEVICE', 'SERIAL', 'NOT AFTER', 'STATUS', 'LAST SEEN'], ...table]));
    if (rows.some((r) => r.expiringSoon)) print(`! expires within ${config.pki.warnDays} days (pki.warnDays) and seen in the last 30 days: issue a new one`);
    return 0;
  });
}

export function columns(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

export function pkiRevokeCommand(what: string, opts: CommonOptions & { device?: string; all?: boolean; reason?: string }): Promise<number> {
  return guarded(async () => {
    const config = configOf(opts);
    const dir = pkiDirOf(config, opts.dir);
    const selector = await revokeSelector(what, opts);
    const r = await revokeDevice(dir, selector, { reason: opts.reason ? parseReason(opts.reason) : undefined, all: opts.all });
    // A pin names an account whatever the chain verdict, and a listener without this CA's CRL never sees the
    // revocation: the revoked keys leave the pin tables too (as the account page's revoke does). Those revoked
    // before as well: a revoke killed after its CRL and before this step is finished by running it again.
    const unpinned: Array<{ file: string; identity: string; pinSha256: string }> = [];
    for (const file of pinTableFiles(config)) {
      for (const c of [...r.revoked, ...r.alreadyRevoked]) {
        for (const gone of await removePin(file, { pin: c.pinSha256 })) unpinned.push({ file, identity: gone.identity, pinSha256: gone.pinSha256 });
      }
    }
    // A listener that trusts this CA without loading its CRL takes the revoked certificate as before: said, never implied.
    const notLoaded = await unloadedCrls(config, dir);
    for (const u of notLoaded) process.stderr.write(`warning: listener ${u.name} trusts this CA but does not load ${u.crl}: the revocation has no effect there; add it to its tls.crlFiles\n`);
    // A published copy of the CRL lacks the revocation until it is copied again: a server serves ca.crl in its place meanwhile.
    const served = config.pki.dir !== undefined && resolve(config.pki.dir) === resolve(dir);
    for (const c of r.revoked.length ? await crlCopies(config, dir) : []) {
      const meanwhile = served ? `the server serves ${pkiPaths(dir).crl} in its place meanwhile` : 'the revocation has no effect there until then';
      process.stderr.write(`warning: listener ${c.name} loads a copy of this CA's CRL (${c.files.join(', ')}), which lacks the revocation: copy ${pkiPaths(dir).crl} there again; ${meanwhile}\n`);
    }
    // Postfix checks no CRL (not even one in smtpd_tls_CAfile): what it verified stays verified, unless the service
    // knows the certificate's digests (pki.dir is this folder, and the certificate is in its issued.json).
    const byDigest = config.pki.dir !== undefined && resolve(config.pki.dir) === resolve(dir) && !r.unrecorded;
    for (const p of byDigest ? [] : config.policyServices.filter((s) => s.relayClientCertificates || s.certificateIdentity.field === 'CN')) {
      process.stderr.write(`warning: policy service ${p.name} takes certificates Postfix verified (${p.relayClientCertificates ? 'relayClientCertificates' : 'certificateIdentity.field CN'}), and Postfix checks no CRL: if its smtpd_tls_CAfile holds this CA, the revocation has no effect there; grant by pins or relayClientCertificatesTable instead, whose lines can be removed\n`);
    }
    // A server whose last reload was refused (a script or table being edited) keeps its generation in force, and with
    // it the CRL and pin tables from before: the revocation waits for that to be fixed, which must not go unsaid.
    const refused = await refusedReloadWarning(config.dataDir, 'the CRL and pins from before this revocation');
    if (refused) process.stderr.write(refused);
    if (opts.json) {
      printJson({ ...r, unpinned, crlNotLoadedBy: notLoaded.map((u) => u.name) });
      return 0;
    }
    for (const c of r.revoked) print(`revoked ${c.identity} (device ${c.device}), serial ${c.serial}: ${c.revoked!.reason}`);
    // Mail accepted from it before is delivered (it was accepted from a device trusted then): the way to stop it.
    for (const c of r.revoked) print(`mail accepted with it before is still delivered; to hold what is queued: postern queue hold --certificate ${c.fingerprintSha256}`);
    for (const c of r.alreadyRevoked) print(`already revoked on ${c.revoked!.at}: ${c.identity} (device ${c.device}), serial ${c.serial}`);
    if (r.unrecorded) print(`revoked serial ${r.unrecorded} (not in this CA's inventory)`);
    for (const u of unpinned) print(`unpinned ${u.identity} (pin ${Buffer.from(u.pinSha256, 'hex').toString('base64url')}) from ${u.file}`);
    if (r.crl) print(`CRL ${r.crl.file}: number ${r.crl.number}, ${r.crl.revoked} revoked, next update ${r.crl.nextUpdate}. A running server applies it to new handshakes at its reload; a session already open with the certificate is refused at its next MAIL FROM, RCPT TO or end of DATA.`);
    return 0;
  });
}

/** SERIAL | FILE | IDENTITY: a file if it exists, an identity with --device/--all or an @, else a hex serial. */
async function revokeSelector(what: string, opts: { device?: string; all?: boolean }): Promise<RevokeSelector> {
  if (opts.device !== undefined || opts.all) return { identity: what, device: opts.device };
  if (existsSync(what)) return { certificatePem: await readFile(what, 'utf8') };
  if (/^(?:0x)?[0-9a-f:]{6,}$/i.test(what) && !what.includes('@')) return { serial: what };
  return { identity: what };
}

export function pkiCrlCommand(opts: CommonOptions): Promise<number> {
  return guarded(async () => {
    const crl = await refreshCrl(pkiDirOf(configOf(opts), opts.dir));
    if (opts.json) printJson(crl);
    else print(`CRL ${crl.file}: number ${crl.number}, ${crl.revoked} revoked, next update ${crl.nextUpdate}`);
    return 0;
  });
}

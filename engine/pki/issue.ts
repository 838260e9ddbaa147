/**
 * Issuing a device certificate: a key, a certificate whose emailAddress and SAN e-mail carry the identity
 * (CN the identity, OU the device), and a PKCS#12 mail clients import. The inventory records it and the
 * CRL is rewritten (its number moves on, its nextUpdate is renewed). The device's private key is returned,
 * never kept by the CA folder: the caller hands it over (files, a one-time download).
 */
import { randomInt } from 'node:crypto';
import { join, resolve } from 'node:path';
import { issueClientCertificate, pkcs12Bytes, type Pkcs12Encryption } from '../certificates/index.ts';
import { makeFolderLikeParent, withFolderLock, writeFileAtomic, type WhenLocked } from './atomic-file.ts';
import { keyTypeOptions, pkiPaths, type DeviceKeyType } from './layout.ts';
import { openCa } from './ca.ts';
import { readInventory, writeInventory, type DeviceCertificate } from './inventory.ts';
import { writeCrl, type CrlWritten } from './crl.ts';
import { certificateFacts, type CertificateFacts } from './certificate-facts.ts';
import { endAfterDays } from './lifetime.ts';

export interface IssueDeviceOptions {
  /** The account: the certificate's emailAddress, SAN e-mail and CN (what `certificateIdentity` reads). */
  identity: string;
  /** The device's name (laptop, phone): the certificate's OU. Default "device". */
  device?: string;
  /** Lifetime; default 730 days. */
  days?: number;
  /** Default ecdsa-p256 (every current mail client); rsa-3072 for the oldest. */
  keyType?: DeviceKeyType;
  /** More SAN e-mail addresses (the identity is always the first when it is an address). */
  emails?: string[];
  /** The PKCS#12 password; default a generated one, returned once. */
  p12Password?: string;
  /** `modern` (default) or `legacy` (3DES/SHA-1, for old Android and Apple importers). */
  p12Encryption?: Pkcs12Encryption;
  /** Tests: the certificate's start (default: one hour ago). */
  notBefore?: Date;
  /** Tests: an exact end instead of `days`. */
  notAfter?: Date;
  /** Once the CA folder's lock is held: throws to issue nothing (see WhenLocked). */
  whenLocked?: WhenLocked;
}

export interface IssuedDevice {
  record: DeviceCertificate;
  facts: CertificateFacts;
  certPem: string;
  /** PKCS#8 PEM: give it to the device, do not keep it. */
  keyPem: string;
  /** The CA certificate, for a client's chain. */
  caPem: string;
  /** PKCS#12 (DER) of key, certificate and CA. */
  p12: Buffer;
  /** The PKCS#12 password, shown once. */
  p12Password: string;
  crl: CrlWritten;
}

/** Identities and device names become file names and certificate fields: printable, no separators. */
const NAME = /^[A-Za-z0-9._%+@-]{1,128}$/;

export function checkName(what: string, value: string): string {
  if (!NAME.test(value)) throw new Error(`${what} "${value}": use letters, digits and . _ % + @ - (at most 128)`);
  return value;
}

/** 20 characters in groups of five from an alphabet without look-alikes: typed on a phone, ~100 bits. */
export function generatePassword(): string {
  const alphabet = 'abcdefghjkmnpqrstuvwxyz23456789';
  const groups: string[] = [];
  for (let g = 0; g < 4; g++) {
    let s = '';
    for (let i = 0; i < 5; i++) s += alphabet[randomInt(alphabet.length)];
    groups.push(s);
  }
  return groups.join('-');
}

export async function issueDevice(dir: string, opts: IssueDeviceOptions): Promise<IssuedDevice> {
  const paths = pkiPaths(resolve(dir));
  // Lowercase, as the server reads every identity (certificate-identity.ts).
  const identity = checkName('identity', opts.identity.trim()).toLowerCase();
  const device = checkName('device', (opts.device ?? 'device').trim());
  const days = opts.days ?? 730;
  if (!(days > 0)) throw new Error(`days must be positive, got ${days}`);
  const keyType = opts.keyType ?? 'ecdsa-p256';
  const emails = [...new Set([...(identity.includes('@') ? [identity.toLowerCase()] : []), ...(opts.emails ?? []).map((e) => e.trim().toLowerCase())])];
  for (const e of emails) if (!/^[^@\s]+@[^@\s]+$/.test(e)) throw new Error(`not an e-mail address: "${e}"`);
  const password = opts.p12Password ?? generatePassword();
  if (!password) throw new Error('the PKCS#12 password must not be empty');
  return withFolderLock(paths.dir, async () => {
    const ca = await openCa(paths);
    const inv = await readInventory(paths);
    const notBefore = opts.notBefore ?? new Date(Date.now() - 3600_000);
    // Never past the CA's own end (nor past any date: a huge --days or issueDays was a malformed certificate).
    const caEnd = ca.certificate.notAfter;
    const notAfter = opts.notAfter ?? endAfterDays(notBefore, days, caEnd);
    const issued = await issueClientCertificate(ca, {
      commonName: identity, organizationalUnit: device, organization: ca.certificate.subjectName.getField('O')[0],
      emailAddress: emails[0], sanEmails: emails, ...keyTypeOptions(keyType),
      notBefore, notAfter: notAfter > caEnd ? caEnd : notAfter,
    });
    const facts = certificateFacts(issued.cert);
    const p12 = await pkcs12Bytes(issued.cert, issued.key, ca.cert, password, {
      encryption: opts.p12Encryption, friendlyName: `${identity} (${device})`,
    });
    const record: DeviceCertificate = {
      serial: facts.serial, identity, device, subject: facts.subject, emails, keyType,
      notBefore: facts.notBefore, notAfter: facts.notAfter, issuedAt: new Date().toISOString(),
      fingerprintSha256: facts.fingerprint.sha256, pinSha256: facts.pin.sha256, revoked: null,
    };
    // Owned like the CA folder: `sudo postern pki issue` must leave a folder the server (the account page) writes to.
    await makeFolderLikeParent(paths.issued, 0o700);
    await writeFileAtomic(join(paths.issued, `${facts.serial}.crt`), issued.cert, 0o644);
    inv.certificates.push(record);
    // Every change re-signs the CRL: its nextUpdate moves on with the CA's use.
    const crl = await writeCrl(paths, ca, inv);
    await writeInventory(paths, inv);
    return { record, facts, certPem: issued.cert, keyPem: issued.key, caPem: ca.cert, p12, p12Password: password, crl };
  }, opts.whenLocked);
}

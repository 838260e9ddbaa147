/**
 * A production CA for device certificates (`postern pki init`): its certificate, its key (0600, never
 * printed), an empty CRL and the inventory; and opening an existing CA folder to sign with it.
 */
import { access, chmod, readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { createCertificateAuthority, loadAuthority, type Authority } from '../certificates/index.ts';
import { makeFolderLikeParent, writeFileAtomic, withFolderLock } from './atomic-file.ts';
import { keyTypeOptions, pkiPaths, type DeviceKeyType, type PkiPaths } from './layout.ts';
import { DEFAULT_CRL_DAYS, writeInventory, type Inventory } from './inventory.ts';
import { writeCrl, type CrlWritten } from './crl.ts';
import { certificateFacts, type CertificateFacts } from './certificate-facts.ts';
import { endAfterDays, fitsX509 } from './lifetime.ts';

export interface InitCaOptions {
  /** The CA's common name; default "Postern Mail CA". */
  name?: string;
  organization?: string;
  /** Lifetime; default 3650 days. */
  days?: number;
  /** Default ecdsa-p256. */
  keyType?: DeviceKeyType;
  /** Lifetime of each CRL; default 365 days. */
  crlDays?: number;
}

export interface InitializedCa {
  paths: PkiPaths;
  ca: CertificateFacts;
  crl: CrlWritten;
  /** What to add to postern.yaml, as YAML text. */
  configLines: string;
}

const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);

export async function initCa(dir: string, opts: InitCaOptions = {}): Promise<InitializedCa> {
  const paths = pkiPaths(resolve(dir));
  // `sudo postern pki init`: a new folder is its parent's user's and group's (the server's data directory, or
  // /etc/postern's group), as the files written into it are, not root's: the server reads ca.crt and ca.crl
  // (group: 0750; the key and inventory stay 0600) and, in a folder of its own, issues (the account page).
  await makeFolderLikeParent(paths.dir, 0o750);
  await chmod(paths.dir, 0o750);
  return withFolderLock(paths.dir, async () => {
    // An init stopped after the key and before the certificate (killed, a power loss) left a key that never
    // signed anything: said so, as no command can use that folder.
    if (await exists(paths.caKey) && !await exists(paths.caCert)) {
      throw new Error(`${paths.caKey}: exists without ${paths.caCert}: an earlier "postern pki init" was stopped before it finished, and this key never signed anything; delete it and run init again`);
    }
    for (const f of [paths.caKey, paths.caCert, paths.inventory]) {
      if (await exists(f)) throw new Error(`${f}: already exists; a CA is never overwritten (choose another --dir)`);
    }
    const days = opts.days ?? 3650;
    if (!(days > 0)) throw new Error(`--days must be positive, got ${days}`);
    const notBefore = new Date(Date.now() - 3600_000);
    // Refused before anything is written: the CA signed with such an end was malformed, its folder left unusable.
    if (!fitsX509(notBefore, days)) throw new Error(`--days ${days}: the CA would end after 9999-12-31, the latest date a certificate can hold`);
    const ca = await createCertificateAuthority({
      commonName: opts.name ?? 'Postern Mail CA', organization: opts.organization,
      ...keyTypeOptions(opts.keyType ?? 'ecdsa-p256'), notBefore, notAfter: endAfterDays(notBefore, days),
    });
    // The key first: a folder with a certificate and no key would look like a CA that cannot sign.
    await writeFileAtomic(paths.caKey, ca.key, 0o600);
    await writeFileAtomic(paths.caCert, ca.cert, 0o644);
    const inv: Inventory = { version: 1, crlNumber: 0, crlDays: opts.crlDays ?? DEFAULT_CRL_DAYS, certificates: [], otherRevoked: [] };
    const crl = await writeCrl(paths, ca, inv);
    await writeInventory(paths, inv);
    return { paths, ca: certificateFacts(ca.cert), crl, configLines: configLines(paths) };
  });
}

/** The lines an administrator pastes: the listener's trust files and where the commands find the CA. */
export function configLines(paths: PkiPaths): string {
  return [
    'pki:',
    `  dir: ${paths.dir}`,
    'listeners:',
    '  - name: submission',
    '    # …',
    '    tls:',
    '      clientCertificates: request',
    `      caFiles: [${paths.caCert}]`,
    `      crlFiles: [${paths.crl}]`,
    '    certificateIdentity:',
    '      field: emailAddress',
    '',
  ].join('\n');
}

/** The CA of a folder, ready to sign. */
export async function openCa(paths: PkiPaths): Promise<Authority> {
  let cert: string;
  let key: string;
  try {
    cert = await readFile(paths.caCert, 'utf8');
  } catch (err) {
    throw new Error(`${paths.caCert}: cannot read the CA certificate (${(err as NodeJS.ErrnoException).code}); is ${paths.dir} a CA folder made by "postern pki init"?`);
  }
  try {
    key = await readFile(paths.caKey, 'utf8');
  } catch (err) {
    throw new Error(`${paths.caKey}: cannot read the CA key (${(err as NodeJS.ErrnoException).code})`);
  }
  try {
    return await loadAuthority(cert, key);
  } catch (err) {
    throw new Error(`${paths.caKey}: does not load as the key of ${paths.caCert}: ${(err as Error).message}`);
  }
}

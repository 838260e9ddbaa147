/**
 * The development PKI `npm start` uses on first start: a CA with an empty CRL, a server certificate for
 * localhost and the configured hostname, and one demo client certificate. Existing files are kept.
 */
import { access, mkdir, readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { dirname, join } from 'node:path';
import { createCertificateAuthority, createCrl, issueClientCertificate, issueServerCertificate, loadAuthority } from './pki.ts';
import { exportPkcs12 } from './pkcs12.ts';
import { pemToDer } from './digests.ts';
import { x509 } from './x509-provider.ts';
import { removeLeftoverTemporaries, writeFileAtomic } from '../spool/fsync.ts';

export interface DevelopmentPki {
  ca: string;
  caKey: string;
  crl: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** Key and certificate in one file (curl --cert, swaks --tls-cert + --tls-key alike). */
  clientPem: string;
  /** PKCS#12 (password "postern"), or null when openssl could not write one. */
  clientP12: string | null;
  /** Files this call wrote; empty when everything already existed. */
  created: string[];
}

export const DEVELOPMENT_P12_PASSWORD = 'postern';

const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);

export async function writeDevelopmentPki(dir: string, opts: { hostname: string; demoUser: { name: string; email: string } }): Promise<DevelopmentPki> {
  const user = opts.demoUser.name;
  if (!/^[A-Za-z0-9._-]+$/.test(user)) throw new Error(`${dir}: demo user name "${user}" cannot be a file name`);
  const p: DevelopmentPki = {
    ca: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key'), crl: join(dir, 'ca.crl'),
    serverCert: join(dir, 'server.crt'), serverKey: join(dir, 'server.key'),
    clientCert: join(dir, `${user}.crt`), clientKey: join(dir, `${user}.key`),
    clientPem: join(dir, `${user}.pem`), clientP12: join(dir, `${user}.p12`),
    created: [],
  };
  const p12 = p.clientP12!;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await removeLeftoverTemporaries(dir); // a start killed while writing a key leaves a copy of it
  // Whole or not at all: a start killed (or a power loss) while writing leaves no empty or torn file that the
  // next start would take for a finished one. Keys are 0600 from their creation.
  const write = async (file: string, text: string, secret = false): Promise<void> => {
    await writeFileAtomic(file, text, secret ? 0o600 : 0o644);
    p.created.push(file);
  };

  // Everything chains to the CA: a new CA makes every other file stale, so all are rewritten.
  const fresh = !(await exists(p.ca) && await exists(p.caKey));
  const ca = fresh
    ? await createCertificateAuthority({ commonName: 'Postern Development CA', organization: 'Postern' })
    : await loadAuthority(await readFile(p.ca, 'utf8'), await readFile(p.caKey, 'utf8')).catch((err: Error) => {
      throw new Error(`${p.ca} and ${p.caKey}: not a usable CA certificate and key (${err.message}); to make a new development PKI, move ${dir} away`);
    });
  if (fresh) {
    await write(p.ca, ca.cert);
    await write(p.caKey, ca.key, true);
  }
  // Valid as long as the CA: an expired CRL fails every development certificate (CRL_HAS_EXPIRED),
  // so an expired one is signed anew with the same entries.
  // `postern pki revoke` works on this CA too, and records in issued.json what its CRL revokes: a CRL gone
  // is made again from that record (postern pki crl), never empty, which would let revoked devices back in.
  const inventory = join(dir, 'issued.json');
  if (!fresh && !await exists(p.crl) && await exists(inventory)) {
    throw new Error(`${p.crl}: missing, and ${inventory} records what it revoked: restore it, or make it again with postern pki crl --dir ${dir}`);
  }
  const revoked = fresh || !await exists(p.crl) ? [] : await expiredCrlEntries(p.crl);
  if (revoked) await write(p.crl, await createCrl(ca, revoked, { nextUpdate: ca.certificate.notAfter }));
  if (fresh || !await exists(p.serverCert) || !await exists(p.serverKey)) {
    const names = [...new Set(['localhost', opts.hostname])];
    const server = await issueServerCertificate(ca, {
      commonName: 'localhost', keyType: 'ecdsa',
      dnsNames: names.filter((n) => !isIP(n)),
      ipAddresses: [...new Set(['127.0.0.1', '::1', ...names.filter((n) => isIP(n))])],
    });
    await write(p.serverCert, server.cert + ca.cert);
    await write(p.serverKey, server.key, true);
  }
  let client: { cert: string; key: string } | null = null;
  if (fresh || !await exists(p.clientCert) || !await exists(p.clientKey)) {
    client = await issueClientCertificate(ca, {
      commonName: user, organization: 'Postern', emailAddress: opts.demoUser.email, sanEmails: [opts.demoUser.email], keyType: 'ecdsa',
    });
    await write(p.clientCert, client.cert);
    await write(p.clientKey, client.key, true);
  }
  const current = async (): Promise<{ cert: string; key: string }> =>
    client ??= { cert: await readFile(p.clientCert, 'utf8'), key: await readFile(p.clientKey, 'utf8') };
  if (p.created.includes(p.clientCert) || !await exists(p.clientPem)) {
    const c = await current();
    await write(p.clientPem, c.key + c.cert, true);
  }
  if (p.created.includes(p.clientCert) || !await exists(p12)) {
    const c = await current();
    // A convenience for mail clients: a start never fails over it.
    const written = await exportPkcs12(c.cert, c.key, ca.cert, DEVELOPMENT_P12_PASSWORD, p12).catch(() => false);
    if (written) p.created.push(p12);
    else p.clientP12 = null;
  }
  return p;
}

/** The serials of an expired CRL (to reissue it), or null while it is still valid. */
async function expiredCrlEntries(file: string): Promise<string[] | null> {
  let crl: x509.X509Crl;
  try {
    crl = new x509.X509Crl(pemToDer(await readFile(file, 'utf8')));
  } catch (err) {
    // Not made again empty: it may revoke certificates (postern pki revoke works on this CA too).
    const dir = dirname(file);
    throw new Error(`${file}: not a readable CRL (${(err as Error).message}); restore it, make it again from ${join(dir, 'issued.json')} with postern pki crl --dir ${dir}, or (if nothing was ever revoked) delete it`);
  }
  return crl.nextUpdate && crl.nextUpdate < new Date() ? crl.entries.map((e) => e.serialNumber) : null;
}

/**
 * PKCS#12 export for mail clients that import a .p12 (Thunderbird, macOS Mail), through the openssl CLI:
 * Node has no PKCS#12 writer. A convenience: without openssl there is simply no .p12.
 */
import { execFile } from 'node:child_process';
import { writeFileAtomic } from '../spool/fsync.ts';

/**
 * Writes `outFile` (mode 0600) holding the key, the certificate and the CA chain, encrypted with
 * `password`. Returns false when openssl is not installed; throws, naming outFile, if openssl fails.
 * Whole or not at all: openssl writes to a pipe, and the file is replaced in one rename. Written in place, a
 * start killed while openssl ran left an empty .p12 that every later start took for a finished one.
 */
export async function exportPkcs12(certPem: string, keyPem: string, caPem: string | null, password: string, outFile: string): Promise<boolean> {
  const der = await opensslPkcs12(certPem, keyPem, caPem, password, {}).catch((err: Error) => { throw new Error(`${outFile}: ${err.message}`); });
  if (der === 'missing') return false;
  await writeFileAtomic(outFile, der, 0o600); // never readable by others, not even while written
  return true;
}

/**
 * How the PKCS#12 is encrypted. `modern`: PBES2/AES-256-CBC keys and certificates, SHA-256 MAC. OpenSSL 1.1
 * would otherwise use RC2/3DES, which OpenSSL 3 without the legacy provider (and modern NSS) refuses to
 * read. `legacy`: 3DES and a SHA-1 MAC, for importers that know nothing newer (Android before 12, older
 * macOS and iOS keychains); still readable by OpenSSL 3 without its legacy provider (no RC2).
 */
export type Pkcs12Encryption = 'modern' | 'legacy';

function pkcs12Encryption(kind: Pkcs12Encryption): string[] {
  return kind === 'modern'
    ? ['-keypbe', 'AES-256-CBC', '-certpbe', 'AES-256-CBC', '-macalg', 'sha256', '-iter', '10000']
    : ['-keypbe', 'PBE-SHA1-3DES', '-certpbe', 'PBE-SHA1-3DES', '-macalg', 'sha1', '-iter', '2048'];
}

/**
 * The PKCS#12 (DER) of key, certificate and CA chain, encrypted with `password`, without touching the
 * disk (a web page hands it out once). Throws when openssl is missing or fails.
 */
export async function pkcs12Bytes(
  certPem: string, keyPem: string, caPem: string | null, password: string,
  opts: { encryption?: Pkcs12Encryption; friendlyName?: string } = {},
): Promise<Buffer> {
  const der = await opensslPkcs12(certPem, keyPem, caPem, password, opts);
  if (der === 'missing') throw new Error('openssl is not installed: no PKCS#12 can be made');
  return der;
}

/** `openssl pkcs12 -export` to a pipe: the DER, or 'missing' when openssl is not installed; throws when it fails. */
async function opensslPkcs12(
  certPem: string, keyPem: string, caPem: string | null, password: string, opts: { encryption?: Pkcs12Encryption; friendlyName?: string },
): Promise<Buffer | 'missing'> {
  const args = ['pkcs12', '-export', '-name', opts.friendlyName ?? 'Postern client certificate', ...pkcs12Encryption(opts.encryption ?? 'modern'),
    // The password travels in the environment, not argv (visible to every user in `ps`).
    '-passout', 'env:POSTERN_P12_PASSWORD'];
  const out: Buffer[] = [];
  const failure = await run('openssl', args, keyPem + certPem + (caPem ?? ''), { ...process.env, POSTERN_P12_PASSWORD: password }, out);
  if (failure === 'missing') return 'missing';
  if (failure) throw new Error(`openssl pkcs12 -export failed: ${failure}`);
  return out[0]!;
}

/** Runs a program with `input` on stdin: its failure text, '' on success, or 'missing' if not installed. */
function run(cmd: string, args: string[], input: string, env: NodeJS.ProcessEnv, stdout?: Buffer[]): Promise<string> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { env, timeout: 30_000, encoding: 'buffer', maxBuffer: 16 * 1024 * 1024 }, (err, out, stderr) => {
      if (!err) {
        stdout?.push(out);
        resolve('');
      } else {
        resolve((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : stderr.toString().trim() || err.message);
      }
    });
    child.stdin!.on('error', () => { /* openssl exited early; its exit status says why */ });
    child.stdin!.end(input);
  });
}

/**
 * PKCS#12 export for mail clients that import a .p12 (Thunderbird, macOS Mail), through the openssl CLI:
 * Node has no PKCS#12 writer. A convenience: without openssl there is simply no .p12.
 */
import { execFile } from 'node:child_process';
import { chmod, rm, writeFile } from 'node:fs/promises';

/**
 * Writes `outFile` (mode 0600) holding the key, the certificate and the CA chain, encrypted with
 * `password`. Returns false when openssl is not installed; throws, naming outFile, if openssl fails.
 */
export async function exportPkcs12(certPem: string, keyPem: string, caPem: string | null, password: string, outFile: string): Promise<boolean> {
  // Explicit PBES2/AES-256 + SHA-256 MAC: OpenSSL 1.1 would otherwise use RC2/3DES, which OpenSSL 3
  // without the legacy provider (and modern NSS) refuses to read.
  const args = ['pkcs12', '-export', '-name', 'Postern client certificate',
    '-keypbe', 'AES-256-CBC', '-certpbe', 'AES-256-CBC', '-macalg', 'sha256', '-iter', '10000',
    // The password travels in the environment, not argv (visible to every user in `ps`).
    '-passout', 'env:POSTERN_P12_PASSWORD', '-out', outFile];
  // Created 0600 first, so the file is never readable by others, not even while openssl writes it.
  await writeFile(outFile, '', { mode: 0o600 });
  await chmod(outFile, 0o600);
  const failure = await run('openssl', args, keyPem + certPem + (caPem ?? ''), { ...process.env, POSTERN_P12_PASSWORD: password });
  if (failure) await rm(outFile, { force: true });
  if (failure === 'missing') return false;
  if (failure) throw new Error(`${outFile}: openssl pkcs12 -export failed: ${failure}`);
  return true;
}

/** Runs a program with `input` on stdin: its failure text, '' on success, or 'missing' if not installed. */
function run(cmd: string, args: string[], input: string, env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { env, timeout: 30_000 }, (err, _stdout, stderr) => {
      if (!err) resolve('');
      else resolve((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : stderr.trim() || err.message);
    });
    child.stdin!.on('error', () => { /* openssl exited early; its exit status says why */ });
    child.stdin!.end(input);
  });
}

/** The openssl CLI as an independent oracle for the certificate tests (a helper, not a test file). */
import { execFile, execFileSync, spawnSync } from 'node:child_process';

/** Runs openssl synchronously; stdout as text. Throws with openssl's stderr on failure. */
export function openssl(args: string[], input?: string | Buffer): string {
  return execFileSync('openssl', args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Runs openssl; stderr then stdout (`pkcs12 -info` reports algorithms on stderr). Throws on failure. */
export function opensslWithStderr(args: string[]): string {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  return r.stderr + r.stdout;
}

/** Runs openssl without blocking, so the many calls of a test overlap; stdout as bytes. */
export function opensslAsync(args: string[], input?: string | Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile('openssl', args, { encoding: 'buffer' }, (err, stdout, stderr) =>
      err ? reject(new Error(`openssl ${args.join(' ')}: ${stderr.toString()}`)) : resolve(stdout));
    child.stdin!.end(input);
  });
}

/** `key=value` lines of `openssl x509 -noout …` as a map (split at the first `=`). */
export async function x509Facts(certFile: string, ...args: string[]): Promise<Map<string, string>> {
  const out = (await opensslAsync(['x509', '-in', certFile, '-noout', ...args])).toString('utf8');
  return new Map(out.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** The SPKI pin as Postfix's documentation computes it: x509 -pubkey | pkey -pubin -outform DER | dgst -sha256. */
export async function opensslSpkiSha256(certFile: string): Promise<string> {
  const pub = await opensslAsync(['x509', '-in', certFile, '-pubkey', '-noout']);
  const der = await opensslAsync(['pkey', '-pubin', '-outform', 'DER'], pub);
  return /= ([0-9a-f]{64})/.exec((await opensslAsync(['dgst', '-sha256'], der)).toString())![1]!;
}

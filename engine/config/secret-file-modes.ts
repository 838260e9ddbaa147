/**
 * Private keys the configuration names (listeners' TLS keys, outbound client certificates' keys, DKIM keys) that
 * every local user may read: Postern reads them as they are, so `postern check` (run by the systemd unit before
 * each start) says so. A key left 0644 by `openssl … -out`, a copy or an unpacked archive gives any local
 * account the server's identity, or the domain's DKIM signature.
 */
import { statSync } from 'node:fs';
import { formatProblem, keyPath } from './config-error.ts';
import type { LoadedConfig } from './load-config.ts';

/** One warning line per private key file readable by others (`file:line:col: key: …`). */
export function readableKeyWarnings(loaded: LoadedConfig): string[] {
  const { config } = loaded;
  const keys: Array<[PropertyKey[], string]> = [
    ...config.listeners.flatMap((l, i): Array<[PropertyKey[], string]> => (l.tls.key ? [[['listeners', i, 'tls', 'key'], l.tls.key]] : [])),
    ...Object.entries(config.delivery?.clientCertificates ?? {}).map(([name, c]): [PropertyKey[], string] => [['delivery', 'clientCertificates', name, 'key'], c.key]),
    ...Object.entries(config.delivery?.dkim ?? {}).map(([name, d]): [PropertyKey[], string] => [['delivery', 'dkim', name, 'privateKey'], d.privateKey]),
  ];
  const warned = new Set<string>();
  const out: string[] = [];
  for (const [path, file] of keys) {
    const mode = modeOf(file);
    if (mode === null || !(mode & 0o004) || warned.has(file)) continue; // a file that cannot be read is a problem reported elsewhere
    warned.add(file);
    out.push(formatProblem({
      file: loaded.file, ...loaded.locate?.(path), path: keyPath(path),
      message: `${file}: a private key every local user can read (mode ${mode.toString(8).padStart(4, '0')}): chmod o-rwx ${file} (0640, group of the server's user)`,
    }));
  }
  return out;
}

function modeOf(file: string): number | null {
  try {
    return statSync(file).mode & 0o777;
  } catch {
    return null;
  }
}

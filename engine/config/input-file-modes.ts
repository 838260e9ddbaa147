/**
 * What `postern check` says of the modes of the files the configuration names (the server uses them as they are).
 *
 * Secrets the configuration names (listeners' TLS keys, outbound client certificates' keys, DKIM keys, the CA key of
 * `pki.dir`, the users file's password hashes) or holds (a `store.redis.url` with a password) that every local user
 * may read: Postern reads them as they are, so `postern check` (run by the systemd unit before each start) says so.
 * A key left 0644 by `openssl … -out`, a copy or an unpacked archive gives any local account the server's identity,
 * or the domain's DKIM signature; the CA key, a certificate that logs in as any account; the hashes, guesses offline
 * (Dovecot's passwd-file and Postfix's sasldb are 0640 for the same reason).
 */
import { readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { formatProblem, keyPath } from './config-error.ts';
import { EMBEDDED_DEFAULT, type LoadedConfig } from './load-config.ts';
import { redisUrlHasPassword } from '../store/redis-url.ts';

/** One warning line per secret file readable by others (`file:line:col: key: …`); `caKey`: `pki.dir`'s CA key file. */
export function readableKeyWarnings(loaded: LoadedConfig, caKey?: string): string[] {
  const { config } = loaded;
  const key = 'a private key';
  const secrets: Array<[PropertyKey[], string, string]> = [
    ...config.listeners.flatMap((l, i): Array<[PropertyKey[], string, string]> => (l.tls.key ? [[['listeners', i, 'tls', 'key'], l.tls.key, key]] : [])),
    ...Object.entries(config.delivery?.clientCertificates ?? {}).map(([name, c]): [PropertyKey[], string, string] => [['delivery', 'clientCertificates', name, 'key'], c.key, key]),
    ...Object.entries(config.delivery?.dkim ?? {}).map(([name, d]): [PropertyKey[], string, string] => [['delivery', 'dkim', name, 'privateKey'], d.privateKey, key]),
    ...(caKey ? [[['pki', 'dir'], caKey, 'the CA\'s private key'] as [PropertyKey[], string, string]] : []),
    ...(config.users ? [[['users'], config.users, 'password hashes'] as [PropertyKey[], string, string]] : []),
    ...(loaded.file !== EMBEDDED_DEFAULT && redisUrlHasPassword(config.store.redis?.url) ? [[['store', 'redis', 'url'], loaded.file, 'a Redis password'] as [PropertyKey[], string, string]] : []),
  ];
  const warned = new Set<string>();
  const out: string[] = [];
  for (const [path, file, what] of secrets) {
    const bits = modeOf(file);
    const mode = bits === null ? null : bits & 0o777;
    if (mode === null || !(mode & 0o004) || warned.has(file)) continue; // a file that cannot be read is a problem reported elsewhere
    warned.add(file);
    out.push(formatProblem({
      file: loaded.file, ...loaded.locate?.(path), path: keyPath(path),
      message: `${file}: ${what} every local user can read (mode ${mode.toString(8).padStart(4, '0')}): chmod o-rwx ${file} (0640, group of the server's user)`,
    }));
  }
  return out;
}

/**
 * Inputs every local user may change: the configuration, scripts (folders and their files), the users file,
 * tables and TLS files, or a folder holding one (where any user could replace it; a sticky folder such as /tmp
 * lets no one replace another's file). Whoever can write them decides what the server accepts and relays (a
 * user of their own in the users file, a CA of their own in caFiles, a script that accepts everything).
 * One warning per path, under the first key that names it.
 */
export function writableInputWarnings(loaded: LoadedConfig): string[] {
  const { config } = loaded;
  const inputs: Array<[PropertyKey[], string, 'file' | 'folder']> = loaded.file === EMBEDDED_DEFAULT ? [] : [[[], loaded.file, 'file']];
  const scriptFolders: Array<[PropertyKey[], string | undefined]> = [
    [['scripts'], config.scripts],
    ...config.listeners.flatMap((l, i): Array<[PropertyKey[], string | undefined]> => [[['listeners', i, 'scripts'], l.scripts], [['listeners', i, 'shadowScripts'], l.shadowScripts]]),
    ...config.policyServices.map((p, i): [PropertyKey[], string | undefined] => [['policyServices', i, 'scripts'], p.scripts]),
  ];
  for (const [path, folder] of scriptFolders) {
    if (!folder) continue;
    inputs.push([path, folder, 'folder']);
    for (const name of listOrNone(folder)) inputs.push([path, join(folder, name), 'file']);
  }
  if (config.users) inputs.push([['users'], config.users, 'file']);
  // Anyone who may write it may make every local recipient unknown (550 for all mail), or open a domain.
  if (config.localRecipients) inputs.push([['localRecipients'], config.localRecipients, 'file']);
  for (const [name, table] of Object.entries(config.tables)) inputs.push([['tables', name], typeof table === 'string' ? table : table.file, 'file']);
  for (const [i, l] of config.listeners.entries()) {
    const tls: Array<[string, string | undefined]> = [['cert', l.tls.cert], ['key', l.tls.key], ...l.tls.caFiles.map((f, j): [string, string] => [`caFiles[${j}]`, f]), ...l.tls.crlFiles.map((f, j): [string, string] => [`crlFiles[${j}]`, f])];
    for (const [key, file] of tls) if (file) inputs.push([['listeners', i, 'tls', ...key.split(/[[\]]/).filter(Boolean).map((k) => (/^\d+$/.test(k) ? Number(k) : k))], file, 'file']);
  }
  const seen = new Set<string>();
  const out: string[] = [];
  const warn = (path: PropertyKey[], file: string, what: string): void => {
    out.push(formatProblem({ file: loaded.file, ...(path.length ? loaded.locate?.(path) : {}), path: path.length ? keyPath(path) : undefined, message: `${file}: ${what}: any local user could change what the server decides; chmod o-w` }));
  };
  for (const [path, file, kind] of inputs) {
    for (const [at, what] of [[file, kind === 'folder' ? 'this folder' : 'this file'], [dirname(file), `this folder, which holds ${file}`]] as const) {
      if (seen.has(at)) continue;
      seen.add(at);
      const mode = modeOf(at);
      if (mode === null || !(mode & 0o002) || (mode & 0o1000 && at !== file)) continue;
      warn(path, at, `every local user may write ${what} (mode ${(mode & 0o777).toString(8).padStart(4, '0')})`);
    }
  }
  return out;
}

/** Permission bits with set-id and sticky bits. */
function modeOf(file: string): number | null {
  try {
    return statSync(file).mode & 0o7777;
  } catch {
    return null;
  }
}

function listOrNone(folder: string): string[] {
  try {
    return readdirSync(folder).sort();
  } catch {
    return [];
  }
}

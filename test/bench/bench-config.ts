/** The Postern configuration every benchmark uses: one STARTTLS listener asking for client certificates. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestPki } from '../helpers/pki.ts';

const given = new Set<number>();
/** A random port for one bench server, never one given to another server of this run. */
export function benchPort(): number {
  let port: number;
  // Below Linux's ephemeral range (32768–60999): a port there may be any client socket's local port
  // (tests and load clients running beside the benchmark), and listening on it then fails.
  do port = 12000 + Math.floor(Math.random() * 20000); while (given.has(port));
  given.add(port);
  return port;
}

/** `shadowScripts`: the listener runs that folder beside its scripts (shadow mode, engine/shadow/). */
export function benchConfig(dir: string, port: number, pki: TestPki, opts: { shadowScripts?: string } = {}): string {
  return `
dataDir: ${dir}/data
scripts: ${dir}/scripts
localDomains: [example.com]
tables: { senders: ${dir}/senders }
listeners:
  - name: bench
    listen: 127.0.0.1:${port}
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }
    auth: { mechanisms: [EXTERNAL] }
    certificateIdentity: { field: emailAddress }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1000 }${opts.shadowScripts ? `\n    shadowScripts: ${opts.shadowScripts}` : ''}
delivery: { enabled: false }
`;
}

/** Benchmark (a)'s scripts: one on every SMTP context, each doing a realistic check. */
export const BENCH_SCRIPTS: Readonly<Record<string, string>> = {
  'connect.ts': `export default function (ctx) { if (ctx.connection.remoteAddress === '192.0.2.1') return reject('no'); }`,
  'helo.ts': `export default function (ctx) { if (ctx.helo.name === 'bad') return reject('no'); }`,
  'auth.ts': `export default function (ctx) { if (ctx.connection.clientCertificate?.verified) return accept({ username: ctx.connection.certificateIdentity ?? 'x' }); }`,
  'mailfrom.ts': `export default function (ctx) { if (lookup('senders', ctx.address.domain) === 'blocked') return reject('blocked'); }`,
  'rcptto.ts': `export default function (ctx) { if (!ctx.builtin.accepted) return reject('relay'); }`,
  'data.ts': `export default function (ctx) { if (ctx.data.size > 10000000) return reject('big'); }`,
};

/** (a)'s mailfrom script with one rate() per MAIL FROM (never over its limit: the cost, not the refusal). */
export const RATE_MAILFROM = `export default async function (ctx) {
  if (lookup('senders', ctx.address.domain) === 'blocked') return reject('blocked');
  const r = await rate('from:' + ctx.address.address, 1000000000, 3600);
  if (!r.allowed) return defer('slow down');
}`;

/** (a)'s mailfrom script made async without a store call: what leaving a plain function costs by itself. */
export const ASYNC_MAILFROM = `export default async function (ctx) {
  if (lookup('senders', ctx.address.domain) === 'blocked') return reject('blocked');
  await null;
}`;

/** (a)'s data script returning header edits (strip one field, add one naming the certificate): what editing at end of data costs. */
export const EDIT_DATA = `export default function (ctx) {
  if (ctx.data.size > 10000000) return reject('big');
  return accept({ headers: [
    { op: 'remove', name: 'X-Originating-IP' },
    { op: 'add', name: 'X-Postern-Client-Cert', value: ctx.connection.clientCertificate?.fingerprint.sha256 ?? 'none' },
  ] });
}`;

/** A bench server's folder as benchConfig() expects it: `scripts/` with `scripts` in it (none: an empty folder) and the senders table. */
export async function writeBenchFolder(dir: string, scripts: Readonly<Record<string, string>> = BENCH_SCRIPTS): Promise<void> {
  await mkdir(join(dir, 'scripts'), { recursive: true });
  for (const [file, text] of Object.entries(scripts)) await writeFile(join(dir, 'scripts', file), text);
  await writeFile(join(dir, 'senders'), 'example.org blocked\n');
}

/**
 * For the device-certificate tests: the command line as an administrator runs it (`node engine/cli/main.ts`),
 * and a Postern whose submission listener trusts a CA made by `postern pki init` and whose `pinned`
 * listener takes a pin table managed by `postern pins`.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestServer } from '../helpers/postern.ts';
import type { TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';

export const run = promisify(execFile);

export type { CliResult };

/** `postern ARGS…`, from a folder unrelated to the configuration. */
export const postern = (args: string[], input?: string, env?: Record<string, string>): Promise<CliResult> => runCli(args, { input, env, timeoutMs: 120_000 });

/** `postern ARGS… --json`, which must succeed: the parsed output. */
export async function posternJson<T = Record<string, unknown>>(args: string[]): Promise<T> {
  const r = await postern([...args, '--json']);
  if (r.code !== 0) throw new Error(`postern ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}

export interface PkiServer {
  server: TestServer;
  /** The CA folder (`pki init`). */
  ca: string;
  /** The pin table of the `pinned` listener. */
  pins: string;
  /** postern.yaml of the server: the commands read it with -c. */
  config: string;
}

/**
 * `pki init` in a new folder, then a server using that CA (listener `submission`; `required` with
 * `clientCertificates: require`) and a pin table (listener `pinned`). `extraConfig` is appended (given the CA folder, when a function).
 */
export async function startPkiServer(pki: TestPki, extraConfig: string | ((ca: string) => string) = ''): Promise<PkiServer> {
  const root = await mkdtemp(join(tmpdir(), 'postern-pki-cli-'));
  const ca = join(root, 'ca');
  const init = await postern(['pki', 'init', '--dir', ca, '--name', 'Example Mail CA']);
  if (init.code !== 0) throw new Error(`pki init: ${init.stderr}`);
  const pins = join(root, 'pins');
  await writeFile(pins, '# pins managed by postern pins\n');
  // Loaded here, not at the top: the files that only run the CLI or `postern serve` start no server in-process.
  const { startTestServer } = await import('../helpers/postern.ts');
  const server = await startTestServer({
    config: `
localDomains: [example.com]
pki: { dir: ${ca} }
tables: { pins: ${pins} }
listeners:
  - name: submission
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${join(ca, 'ca.crt')}], crlFiles: [${join(ca, 'ca.crl')}] }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { field: emailAddress }
  - name: required
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: require, caFiles: [${join(ca, 'ca.crt')}], crlFiles: [${join(ca, 'ca.crl')}] }
    certificateIdentity: { field: emailAddress }
  - name: pinned
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { pins: pins }
${typeof extraConfig === 'string' ? extraConfig : extraConfig(ca)}`,
  });
  return { server, ca, pins, config: join(server.dir, 'postern.yaml') };
}

/** A device certificate issued with `pki issue` (to the CA folder's devices/): its certificate and key, PEM, and their files. */
export async function issueDevice(config: string, identity: string, device = 'laptop'): Promise<{ cert: string; key: string; files: { cert: string; key: string } }> {
  const issued = await posternJson<{ files: { cert: string; key: string } }>(['pki', 'issue', identity, '--device', device, '-c', config]);
  return { cert: await readFile(issued.files.cert, 'utf8'), key: await readFile(issued.files.key, 'utf8'), files: issued.files };
}

/** The reply code of AUTH EXTERNAL on a new STARTTLS session of `listener` with `device`'s certificate (235: logged in). */
export async function externalLogin(server: TestServer, listener: string, pki: TestPki, device: { cert: string; key: string }): Promise<number> {
  const c = await SmtpTestClient.connect(server.port(listener));
  try {
    await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key } });
    return (await c.command('AUTH EXTERNAL =')).code;
  } finally {
    c.socket.destroy();
  }
}

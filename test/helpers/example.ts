/**
 * Runs one folder of examples/ as a user would: a temporary copy of the folder with the test PKI in its
 * ./pki/, lines added to its tables and users file, every listener on 127.0.0.1:0 and delivery off (no
 * test mail leaves the machine). Everything else — the configuration, scripts, tables — is the example's own.
 */
import { appendFile, chmod, cp, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { execFile, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseDocument, type Document } from 'yaml';
import type { RunningPostern } from '../../engine/app/postern.ts';
import type { SpoolEnvelope } from '../../engine/spool/envelope.ts';
import { makeTestPki, type ClientName, type TestPki } from './pki.ts';
import { SmtpTestClient, type Reply } from './smtp-client.ts';
import { setUnhurriedLimits } from './unhurried-limits.ts';

export { hashPassword } from '../../engine/auth/password-hash.ts';

const EXAMPLES = fileURLToPath(new URL('../../examples/', import.meta.url));

export interface ExampleServer {
  /** The temporary copy of the example folder. */
  dir: string;
  pki: TestPki;
  running: RunningPostern;
  /** Bound port of a listener (the only one when no name is given). */
  port(listener?: string): number;
  /** Parsed log lines so far (level info; POSTERN_TEST_LOG=debug prints them instead). */
  logs: Array<Record<string, unknown>>;
  /** The spooled envelope of the message a `… queued as <id>` reply (or client output) names. */
  queued(text: string): Promise<SpoolEnvelope>;
  stop(): Promise<void>;
}

/** The copy startExample runs: the example's folder with the test PKI in ./pki/, lines appended, listeners on port 0, delivery off. */
export async function copyExample(name: string, append: (pki: TestPki) => Promise<Record<string, string>> | Record<string, string> = () => ({}),
  edit: (config: Document) => void = () => {})
  : Promise<{ dir: string; pki: TestPki; configPath: string }> {
  const pki = await makeTestPki();
  const dir = await mkdtemp(join(tmpdir(), `postern-example-${name}-`));
  await cp(join(EXAMPLES, name), dir, {
    recursive: true,
    filter: (src) => !['data', 'pki'].includes(basename(src)) && !src.endsWith('.test.ts'),
  });
  // As the READMEs' steps do: a clone leaves the users file 0644, and the server says so at error.
  await chmod(join(dir, 'users'), 0o600).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err; });
  await mkdir(join(dir, 'pki'));
  const pkiFiles = { 'server.crt': pki.server.cert, 'server.key': pki.server.key, 'ca.crt': pki.ca.cert, 'ca.crl': pki.crl };
  for (const [file, from] of Object.entries(pkiFiles)) await copyFile(from, join(dir, 'pki', file));
  for (const [file, lines] of Object.entries(await append(pki))) await appendFile(join(dir, file), `\n${lines.trim()}\n`);

  const configPath = join(dir, 'postern.yaml');
  const doc = parseDocument(await readFile(configPath, 'utf8'));
  const listeners = (doc.toJS() as { listeners?: unknown[] }).listeners ?? []; // none: a policy-service-only example
  listeners.forEach((_, i) => doc.setIn(['listeners', i, 'listen'], '127.0.0.1:0'));
  doc.setIn(['delivery', 'enabled'], false);
  // The copy only: an example that sets no limits gets the test servers' (test/helpers/postern.ts).
  setUnhurriedLimits(doc);
  edit(doc); // what only the test can know, e.g. the address of the test's Redis
  await writeFile(configPath, doc.toString());

  return { dir, pki, configPath };
}

/**
 * Start examples/<name>. `append` maps a file of the example (a table, the users file) to lines added at
 * its end in the copy, e.g. the test client's real fingerprint; `edit` changes the copy's configuration.
 */
export async function startExample(name: string, append: (pki: TestPki) => Promise<Record<string, string>> | Record<string, string> = () => ({}),
  edit: (config: Document) => void = () => {})
  : Promise<ExampleServer> {
  const { dir, pki, configPath } = await copyExample(name, append, edit);
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  // Loaded here, not at the top: most files that import this one only for needs() or run() start no server in-process.
  const { startPostern } = await import('../../engine/app/postern.ts');
  const { createLogger } = await import('../../engine/logging/logger.ts');
  const running = await startPostern({
    configPath,
    logger: process.env.POSTERN_TEST_LOG ? createLogger(process.env.POSTERN_TEST_LOG, process.stderr) : createLogger('info', sink),
  });
  return {
    dir, pki, running, logs,
    port(listener) {
      const addresses = [...running.addresses.entries()];
      const found = listener ? running.addresses.get(listener) : addresses.length === 1 ? addresses[0]![1] : undefined;
      if (!found) throw new Error(`no listener ${listener ?? '(several: name one)'}`);
      return found.port;
    },
    async queued(text) {
      const id = /queued as (\w+)/.exec(text)?.[1];
      if (!id) throw new Error(`no "queued as" in:\n${text}`);
      return running.runtime.spool.readEnvelope(id);
    },
    async stop() {
      await running.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * An SmtpTestClient past the greeting and EHLO, with TLS up (STARTTLS, or implicit TLS when the listener
 * is implicit) presenting the given client's certificate; `tls: false` stays in plaintext.
 */
export async function smtpClient(ex: ExampleServer, opts: { client?: ClientName; tls?: boolean; listener?: string } = {})
  : Promise<SmtpTestClient & { ehlo: Reply }> {
  const port = ex.port(opts.listener);
  const listener = ex.running.config.config.listeners.find((l) => ex.running.addresses.get(l.name)?.port === port)!;
  const c = opts.client ? ex.pki.clients[opts.client] : undefined;
  const tls = { ca: readFileSync(ex.pki.ca.cert, 'utf8'), cert: c && readFileSync(c.cert, 'utf8'), key: c && readFileSync(c.key, 'utf8') };
  if (listener.tls.mode === 'implicit') {
    const client = await SmtpTestClient.connect(port, { implicitTls: tls });
    return Object.assign(client, { ehlo: await client.hello() });
  }
  const client = await SmtpTestClient.connect(port);
  return Object.assign(client, { ehlo: await client.hello(opts.tls === false ? {} : { starttls: tls }) });
}

export interface RunResult { code: number; stdout: string; stderr: string; output: string }

/** Run a client program; never throws for a non-zero exit (tests assert the code). */
export function run(cmd: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : NaN) : 0;
      if (err && Number.isNaN(code)) return reject(err); // not started, or killed by the timeout
      resolve({ code, stdout, stderr, output: stdout + stderr });
    });
  });
}

/** Test options for a test needing a client program: a failure under CI (POSTERN_REQUIRE_CLIENTS), else a skip. */
export function needs(...tools: string[]): { skip: string | false } {
  const missing = tools.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
  if (missing.length && process.env.POSTERN_REQUIRE_CLIENTS) throw new Error(`${missing.join(', ')} not installed`);
  return { skip: missing.length ? `${missing.join(', ')} not installed` : false };
}

/** `python3 -c` with a program that prints one JSON value; returns it parsed. */
export async function python<T>(program: string): Promise<T> {
  const r = await run('python3', ['-c', program]);
  if (r.code !== 0) throw new Error(`python3 exited ${r.code}:\n${r.output}`);
  return JSON.parse(r.stdout) as T;
}

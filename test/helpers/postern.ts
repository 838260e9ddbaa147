/**
 * Start a real Postern on 127.0.0.1 with ephemeral ports, a temporary data folder and given scripts.
 * The configuration is written to <dir>/postern.yaml, so reload tests can edit it.
 */
import { chmod, mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { startPostern, type RunningPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import type { DeliveryResolver } from '../../engine/delivery/dns.ts';
import type { CounterStore } from '../../engine/store/index.ts';
import { withUnhurriedLimits } from './unhurried-limits.ts';
export { UNHURRIED_LIMITS, withUnhurriedLimits, setUnhurriedLimits } from './unhurried-limits.ts';

export interface TestServer extends RunningPostern {
  dir: string;
  port(listener: string): number;
  /** Log lines (parsed JSON) written so far. */
  logs: Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

export interface TestServerOptions {
  /** YAML; `dataDir`/`scripts` default to the temp folder. */
  config: string;
  /** Script files by name, e.g. { 'auth.ts': '...' }. */
  scripts?: Record<string, string>;
  /** Extra files (tables, users) by name, written into the temp folder (`folder/name` makes the folder). */
  files?: Record<string, string>;
  /** The mode of `files` (default 0600: a users file every local user can read is an error line at start). */
  fileMode?: number;
  /** Reload debounce (default 50 ms). */
  settleMs?: number;
  /** DNS stand-in for delivery routing. */
  resolver?: DeliveryResolver;
  /** Counter store to use instead of the server's own memory (see StartOptions.memoryStore). */
  memoryStore?: CounterStore;
  /** The data folder (default: `data` in the temp folder), e.g. on a small filesystem of the test's own. */
  dataDir?: string;
  /** The level of the lines kept in `logs` (default debug), e.g. trace to see smtp-server's own per-command lines. */
  logLevel?: string;
  /**
   * `unhurried` (the default): a config that sets no `sandbox.timeoutMs` gets 10 s (see UNHURRIED_LIMITS).
   * `product`: the product's own defaults, for a server whose scripts or store calls are meant to run out of them.
   */
  scriptLimits?: 'unhurried' | 'product';
}

/**
 * The usual setup of a protocol test: local domain example.com and one plain listener `mx` on a free port, no
 * greeting pause.
 */
export const PLAIN_MX_CONFIG = `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`;

export async function startTestServer(opts: TestServerOptions): Promise<TestServer> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-test-'));
  await mkdir(join(dir, 'scripts'));
  for (const [name, text] of Object.entries(opts.scripts ?? {})) await writeFile(join(dir, 'scripts', name), text);
  for (const [name, text] of Object.entries(opts.files ?? {})) {
    await mkdir(dirname(join(dir, name)), { recursive: true });
    await writeFile(join(dir, name), text, { mode: opts.fileMode ?? 0o600 });
    await chmod(join(dir, name), opts.fileMode ?? 0o600); // whatever the umask
  }
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const base = `dataDir: ${JSON.stringify(opts.dataDir ?? join(dir, 'data'))}\nscripts: ${JSON.stringify(join(dir, 'scripts'))}\n`;
  const config = opts.scriptLimits === 'product' ? opts.config : withUnhurriedLimits(opts.config);
  await writeFile(join(dir, 'postern.yaml'), base + config);
  const running = await startPostern({
    configPath: join(dir, 'postern.yaml'), settleMs: opts.settleMs, resolver: opts.resolver, memoryStore: opts.memoryStore,
    logger: createLogger(process.env.POSTERN_TEST_LOG ?? opts.logLevel ?? 'debug', process.env.POSTERN_TEST_LOG ? process.stderr : sink),
  });
  return Object.assign(running, {
    dir, logs,
    port: (name: string) => running.addresses.get(name)!.port,
    async stop() {
      await running.close();
      await rm(dir, { recursive: true, force: true });
    },
  });
}

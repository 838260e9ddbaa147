/**
 * A real `postern serve` as a child process (supervisor + worker processes) on 127.0.0.1, with a temporary
 * data folder; its JSON log lines are collected so tests can wait for events.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, mkdir, writeFile, readFile, readdir, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import assert from 'node:assert/strict';
import { SmtpTestClient } from './smtp-client.ts';
export { freePort } from './free-port.ts';
import { freePort } from './free-port.ts';
import { withUnhurriedLimits } from './unhurried-limits.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

export interface ClusterProcess {
  dir: string;
  dataDir: string;
  port(listener: string): number;
  logs: Array<Record<string, unknown>>;
  /** The same lines as written (JSON.parse hides what a line got wrong, e.g. a key twice). */
  lines: string[];
  proc: ChildProcess;
  /** <dataDir>/cluster.json as written now. */
  cluster(): Promise<ClusterStatus>;
  waitFor<T>(what: string, check: () => Promise<T | null | undefined | false> | T | null | undefined | false, timeoutMs?: number): Promise<T>;
  stop(): Promise<void>;
}

export interface ClusterStatus {
  processes: Array<{ role: string; index: number; pid: number | null; ready: boolean; restarts: number }>;
  fences: Array<{ hook: string; file: string; sha256: string }>;
  reload: {
    converged: boolean;
    lastError: string[] | null;
    processes: Record<string, { generation: number; digest: string; refused: string | null; lastError: string[] | null; reloads: number }>;
    /** The content whose live keys the supervisor judges by (limits at accept, the spool's floors; null: the one it started with). */
    supervisor?: string | null;
    /** Why file changes are polled for instead of watched, or null while they are watched. */
    watching?: string | null;
  };
}

/**
 * For tests that need connections on every worker (limits summed over workers, a bystander on another
 * worker): the default `workerChoice: fill` keeps an idle server's connections on the first worker.
 */
export const ROUND_ROBIN = 'workerChoice: roundRobin\n';

/** Two workers and one plaintext listener `in` on a free port: what most cluster tests run. */
export const TWO_WORKERS = `
workers: 2
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`;

/** TWO_WORKERS with one worker. */
export const ONE_WORKER = TWO_WORKERS.replace('workers: 2', 'workers: 1');

/** A `delivery:` section to a test's sink on `port`, plain SMTP, scanning every 200 ms; `retrySchedule` in seconds. */
export function deliveryToSink(port: number, opts: { retrySchedule?: number[]; scanIntervalMs?: number } = {}): string {
  const retry = opts.retrySchedule ? `  retrySchedule: [${opts.retrySchedule.join(', ')}]\n` : '';
  return `delivery:\n  route: { smarthost: { host: 127.0.0.1, port: ${port} } }\n  tls: { mode: none }\n  scanIntervalMs: ${opts.scanIntervalMs ?? 200}\n${retry}`;
}


/** `config` is YAML without dataDir/scripts; `{PORT:name}` placeholders become free ports. */
/** `detached`: the server leads its own process group (a signal to `-pid` reaches it and all its children). */
/** `installed`: started as the installed command (bin/postern.js) instead of engine/cli/main.ts; `node`: the Node that starts it (default: the pinned Node 24); `nodeArgs`: options for node itself; `env`: more environment. */
/** `wrap`: a command that execs the server, e.g. `['setpriv', '--bounding-set=-dac_override']` (root without the capabilities that bypass file permissions). */
/** `dataDir`: the data folder (default: `data` in the temporary folder), e.g. on a small filesystem of the test's own. */
/**
 * `scriptLimits`: as startTestServer's (test/helpers/postern.ts). `unhurried` (the default): a config that sets no
 * `sandbox`, no `dns` and no Redis `timeoutMs` gets 10 s a script call (UNHURRIED_LIMITS), added after its lines;
 * at the product's 100 ms a loaded machine that held a worker's isolate thread back turned an accept into 451 4.3.0.
 * `product`: the product's own defaults, for a server whose scripts (or store calls) are meant to run out of them.
 */
export async function startCluster(opts: { config: string; scripts?: Record<string, string>; files?: Record<string, string>; fileMode?: number; detached?: boolean; installed?: boolean; node?: string; nodeArgs?: string[]; env?: Record<string, string>; wrap?: string[]; dataDir?: string; scriptLimits?: 'unhurried' | 'product';
  /** Each log line as it comes, from the start (before the supervisor says it started: a step of the start-up). */
  onLog?: (line: Record<string, unknown>) => void; }): Promise<ClusterProcess> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-cluster-'));
  await mkdir(join(dir, 'scripts'));
  for (const [name, text] of Object.entries(opts.scripts ?? {})) await writeFile(join(dir, 'scripts', name), text);
  // 0600 unless asked (a users file every local user can read is an error line at start).
  for (const [name, text] of Object.entries(opts.files ?? {})) {
    await writeFile(join(dir, name), text, { mode: opts.fileMode ?? 0o600 });
    await chmod(join(dir, name), opts.fileMode ?? 0o600);
  }
  const ports = new Map<string, number>();
  let config = opts.config;
  for (const m of [...config.matchAll(/\{PORT:(\w+)\}/g)]) {
    if (!ports.has(m[1]!)) ports.set(m[1]!, await freePort());
    config = config.replace(m[0], String(ports.get(m[1]!)));
  }
  if (opts.scriptLimits !== 'product') config = withUnhurriedLimits(config);
  const dataDir = opts.dataDir ?? join(dir, 'data');
  await writeFile(join(dir, 'postern.yaml'), `dataDir: ${JSON.stringify(dataDir)}\nscripts: ${JSON.stringify(join(dir, 'scripts'))}\n${config}`);
  const entry = join(ROOT, opts.installed ? 'bin/postern.js' : 'engine/cli/main.ts');
  const command = [...(opts.wrap ?? []), opts.node ?? join(ROOT, 'node_modules/.bin/node'), ...(opts.nodeArgs ?? []), entry, 'serve', '--config', join(dir, 'postern.yaml')];
  const proc = spawn(command[0]!, command.slice(1), {
    cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1', ...opts.env }, detached: opts.detached ?? false,
  });
  return watchServer(proc, { dir, dataDir, ports, onLog: opts.onLog });
}

/**
 * A `postern serve` child started by the caller, watched as startCluster's are: its JSON log lines collected,
 * resolved once the supervisor has started; `stop()` sends SIGTERM, waits for the exit and removes `dir`.
 */
export async function watchServer(proc: ChildProcess, where: { dir: string; dataDir: string; ports: ReadonlyMap<string, number>; onLog?: (line: Record<string, unknown>) => void }): Promise<ClusterProcess> {
  const { dir, dataDir, ports, onLog } = where;
  const logs: Array<Record<string, unknown>> = [];
  const written: string[] = [];
  let partial = '';
  // A character whose bytes two reads split is decoded whole (chunk.toString() made each half a U+FFFD).
  const decoder = new StringDecoder('utf8');
  proc.stdout!.on('data', (chunk: Buffer) => {
    partial += decoder.write(chunk);
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      written.push(line);
      try { logs.push(JSON.parse(line) as Record<string, unknown>); } catch { logs.push({ text: line }); }
      onLog?.(logs[logs.length - 1]!);
    }
  });
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); if (process.env.POSTERN_TEST_LOG) process.stderr.write(c); });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const waitFor = async <T>(what: string, check: () => Promise<T | null | undefined | false> | T | null | undefined | false, timeoutMs = 60_000): Promise<T> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await check();
      if (v) return v;
      if (proc.exitCode !== null) throw new Error(`server exited while waiting for ${what}: ${stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; stderr: ${stderr}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  const cluster = async (): Promise<ClusterStatus> => JSON.parse(await readFile(join(dataDir, 'cluster.json'), 'utf8')) as ClusterStatus;
  await waitFor('the supervisor to start', () => logs.some((l) => l.msg === 'supervisor started'));
  return {
    dir, dataDir, logs, lines: written, proc, cluster, waitFor,
    port: (name) => ports.get(name)!,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Pid of a ready worker, from cluster.json. */
export async function workerPid(c: ClusterProcess, index: number): Promise<number> {
  return c.waitFor(`worker ${index} ready`, async () => {
    const p = (await c.cluster()).processes.find((x) => x.role === 'worker' && x.index === index);
    return p?.ready && p.pid ? p.pid : null;
  });
}

/**
 * The index of the worker whose process holds the server's end of `client`'s connection (a loopback IPv4 one),
 * found in /proc: which worker the supervisor handed it to. Round robin skips a worker whose heartbeat is late
 * (STALE_FOR_CONNECTIONS_MS), so on a loaded machine two connections in a row may go to the same worker: a test
 * that needs them on different workers asks, rather than assume.
 */
export async function workerOf(c: ClusterProcess, client: SmtpTestClient): Promise<number> {
  const hexPort = (port: number): string => port.toString(16).toUpperCase().padStart(4, '0');
  const serverEnd = `:${hexPort(client.socket.remotePort!)}`;
  const clientEnd = `:${hexPort(client.socket.localPort!)}`;
  const inode = (await readFile('/proc/net/tcp', 'utf8')).split('\n').map((line) => line.trim().split(/\s+/))
    .find((f) => f[1]?.endsWith(serverEnd) && f[2]?.endsWith(clientEnd))?.[9];
  assert.ok(inode && inode !== '0', `the server's end of the connection from port ${client.socket.localPort} in /proc/net/tcp`);
  for (const p of (await c.cluster()).processes.filter((x) => x.role === 'worker' && x.pid)) {
    const fds = await readdir(`/proc/${p.pid}/fd`).catch(() => [] as string[]);
    const links = await Promise.all(fds.map((fd) => readlink(`/proc/${p.pid}/fd/${fd}`).catch(() => '')));
    if (links.includes(`socket:[${inode}]`)) return p.index;
  }
  throw new Error(`no worker holds the connection from port ${client.socket.localPort}`);
}

export async function greeted(c: ClusterProcess): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(c.port('in'));
  const r = await client.read(30_000);
  assert.equal(r.code, 220);
  assert.equal((await client.command('EHLO client.test', 30_000)).code, 250);
  return client;
}

/** Every id in the server's spools now (a reader's view, like `postern queue list`). */
export async function spooled(c: ClusterProcess): Promise<Set<string>> {
  // Loaded here, not at the top: the spool's modules cost every cluster test's process some 0.1 s, and few read it.
  const { Spool } = await import('../../engine/spool/spool.ts');
  const { SpoolSet } = await import('../../engine/cluster/spool-set.ts');
  return new Set(await new SpoolSet(new Spool(join(c.dataDir, 'spool'))).list());
}

/** Clients sending messages over and over, reconnecting after a failure; every 250's id is kept. */
export function load(c: ClusterProcess, clients: number): { acked: string[]; failures: number; stuck: number; stop(): Promise<void> } {
  const state = { acked: [] as string[], failures: 0, stuck: 0, stopped: false };
  const loops = Array.from({ length: clients }, async (_, n) => {
    while (!state.stopped) {
      let client: SmtpTestClient | null = null;
      try {
        client = await greeted(c);
        for (let i = 0; i < 20 && !state.stopped; i++) {
          const r = await client.sendMail('sender@example.test', [`user${n}@example.test`], `Subject: ${n}/${i}\r\n\r\nload\r\n`);
          const id = /queued as ([0-9a-z]+)/.exec(r.text)?.[1];
          if (r.code === 250 && id) state.acked.push(id);
        }
        await client.quit();
      } catch (err) {
        state.failures++;
        // Neither a reply nor a close: a connection left hanging (the supervisor must close what never reached a worker).
        if (/timeout waiting for reply/.test(String(err))) state.stuck++;
        client?.destroy();
        await new Promise((r) => setTimeout(r, 10)); // a refused connection must not spin
      }
    }
  });
  return {
    get acked() { return state.acked; },
    get failures() { return state.failures; },
    get stuck() { return state.stuck; },
    async stop() { state.stopped = true; await Promise.all(loops); },
  };
}

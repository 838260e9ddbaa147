/**
 * examples/systemd/postern.service without systemd: `postern serve` started from the unit's own ExecStart, as
 * a user of the unit's kind, with its capabilities, umask, no_new_privs, address families and a file system
 * read-only but for its ReadWritePaths and StateDirectory (a mount namespace: unshare, then setpriv and a
 * seccomp filter, test/helpers/restrict-address-families.c). The unit is parsed here, so a test follows it when
 * it changes; a directive this file does not know fails the start, so a new one gets emulated or listed below.
 *
 * The unit's paths are mapped into a scratch folder (`/etc/postern` → `<root>/etc`, `/var/lib/postern` →
 * `<root>/var-lib-postern`, …); its user is a uid of no one (`SERVICE_USER`).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { freePort } from './free-port.ts';
import { watchServer, type ClusterProcess } from './cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname.replace(/\/$/, '');
export const UNIT_FILE = join(ROOT, 'examples', 'systemd', 'postern.service');
const NODE = join(ROOT, 'node_modules', '.bin', 'node');

/** The unit's `User=`/`Group=` here: a uid and gid no account has (the test runs as root). */
export const SERVICE_USER = { uid: 64123, gid: 64123 };

/** Directives emulated here, and those left to systemd (they only take away more than the test needs). */
const EMULATED = new Set(['Type', 'User', 'Group', 'SupplementaryGroups', 'ExecStartPre', 'ExecStart', 'ExecReload', 'KillSignal', 'TimeoutStopSec',
  'AmbientCapabilities', 'CapabilityBoundingSet', 'NoNewPrivileges', 'UMask', 'StateDirectory', 'StateDirectoryMode', 'CacheDirectory', 'CacheDirectoryMode', 'ReadWritePaths',
  'ProtectSystem', 'RestrictAddressFamilies', 'Restart', 'RestartSec', 'SyslogIdentifier', 'NotifyAccess', 'TimeoutStartSec', 'LimitCORE']);
const NOT_EMULATED = new Set(['ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ProtectKernelTunables', 'ProtectKernelModules',
  'ProtectControlGroups', 'RestrictNamespaces', 'LockPersonality', 'LimitNOFILE', 'StandardOutput', 'LogsDirectory']);

/** The folders systemd makes for StateDirectory= (/var/lib/<name>) or CacheDirectory= (/var/cache/<name>). */
function serviceDirectories(unit: Map<string, string[]>, kind: 'State' | 'Cache'): string[] {
  const base = kind === 'State' ? '/var/lib' : '/var/cache';
  return (directive(unit, `${kind}Directory`) ?? '').split(/\s+/).filter(Boolean).map((name) => `${base}/${name}`);
}

/** `[Service]` of the unit: each directive's values in order (a directive may repeat). */
export function unitService(file = UNIT_FILE): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) { section = header[1]!; continue; }
    if (section !== 'Service') continue;
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

/** The last value of a directive (systemd's rule for single-valued ones). */
export function directive(unit: Map<string, string[]>, key: string): string | undefined {
  return unit.get(key)?.at(-1);
}

/** A duration as systemd writes it (`60`, `90s`, `2min`) in ms. */
export function unitSeconds(value: string): number {
  const m = /^(\d+)\s*(s|sec|min|m)?$/.exec(value.trim());
  if (!m) throw new Error(`duration ${value}: not understood`);
  return Number(m[1]) * (m[2] === 'min' || m[2] === 'm' ? 60_000 : 1000);
}

export interface UnitServer extends ClusterProcess {
  /** The scratch folder the unit's paths are mapped into. */
  root: string;
  /** Where a path of the unit (`/etc/postern/x`) is in this test. */
  path(unitPath: string): string;
  /** Runs the unit's ExecReload (`$MAINPID` is the server's) to its end: its exit status and output. */
  reload(): Promise<{ status: number | null; stdout: string; stderr: string }>;
  /** With Type=notify: the sd_notify lines systemd would take (NotifyAccess= applied), in order. */
  notifications: string[];
}

export interface UnitOptions {
  /** postern.yaml as the unit's ExecStart reads it; paths as the docs write them (`/var/lib/postern`), `{PORT:name}` a free port. */
  config: string;
  /** More files by the unit's path (`/etc/postern/scripts/rcptto.ts`), written by root with mode 0640, group the service's. */
  files?: Record<string, string>;
  /** More path mappings (a unix socket's folder outside the unit's, say), made as given: `{ path, owner, group, mode }`. */
  folders?: Array<{ unitPath: string; uid: number; gid: number; mode: number }>;
  /** Ports chosen by the test (`{PORT:mx}` given a privileged one). */
  ports?: Record<string, number>;
  /** What an administrator does before the start (`sudo postern pki init`), given where the unit's paths are. */
  prepare?: (path: (unitPath: string) => string) => Promise<void>;
  /**
   * The folder of the unit's CacheDirectory= (made the service's, as systemd does), kept by the caller from one start to
   * the next as systemd keeps it: a start then runs on the code the one before compiled. Default: a new one each start.
   * Its parent must be root's and closed to others (bin/compile-cache.js uses no other).
   */
  cacheDirectory?: string;
}

/** The server as the unit starts it: its ExecStartPre first (a failure is thrown with its output). */
export async function startUnderUnit(opts: UnitOptions): Promise<UnitServer> {
  const unit = unitService();
  for (const key of unit.keys()) {
    if (!EMULATED.has(key) && !NOT_EMULATED.has(key)) throw new Error(`${UNIT_FILE}: ${key}= is neither emulated nor listed as left to systemd (test/helpers/systemd-unit.ts)`);
  }
  const root = await mkdtemp(join(tmpdir(), 'postern-unit-'));
  await chmod(root, 0o755);
  return startIn(root, unit, opts).catch(async (err: unknown) => { await rm(root, { recursive: true, force: true }); throw err; });
}

async function startIn(root: string, unit: Map<string, string[]>, opts: UnitOptions): Promise<UnitServer> {
  const mapping = new Map<string, string>([['/usr/bin/node', NODE], ['/usr/lib/node_modules/postern', ROOT], ['/bin/kill', '/bin/kill']]);
  const mapped = (p: string): string => {
    for (const [from, to] of [...mapping].sort((a, b) => b[0].length - a[0].length)) {
      if (p === from || p.startsWith(`${from}/`)) return to + p.slice(from.length);
    }
    throw new Error(`${p}: a path of the unit or configuration this test does not map`);
  };
  const folder = async (unitPath: string, uid: number, gid: number, mode: number, at = join(root, unitPath.replace(/^\//, '').replaceAll('/', '-'))): Promise<void> => {
    mapping.set(unitPath, at);
    await mkdir(at, { recursive: true });
    await chown(at, uid, gid);
    await chmod(at, mode);
  };
  // docs/operations.md: `install -d -o root -g postern -m 0750 /etc/postern`.
  await folder('/etc/postern', 0, SERVICE_USER.gid, 0o750);
  // StateDirectory= and CacheDirectory=: the service's, with their modes (0755 without); the cache named by $CACHE_DIRECTORY.
  for (const kind of ['State', 'Cache'] as const) {
    for (const path of serviceDirectories(unit, kind)) {
      await folder(path, SERVICE_USER.uid, SERVICE_USER.gid, parseInt(directive(unit, `${kind}DirectoryMode`) ?? '0755', 8), kind === 'Cache' ? opts.cacheDirectory : undefined);
    }
  }
  const caches = serviceDirectories(unit, 'Cache');
  for (const f of opts.folders ?? []) await folder(f.unitPath, f.uid, f.gid, f.mode);

  const ports = new Map<string, number>(Object.entries(opts.ports ?? {}));
  let config = opts.config;
  for (const m of [...config.matchAll(/\{PORT:(\w+)\}/g)]) {
    if (!ports.has(m[1]!)) ports.set(m[1]!, await freePort());
    config = config.replace(m[0], String(ports.get(m[1]!)));
  }
  // The configuration's absolute paths are the unit's: each mapped (a path nobody maps is an error).
  config = config.replace(/(?<=[\s"'[:])\/(?:etc|var|run|usr)\/[^\s"',\]]*/g, (p) => mapped(p));
  const files = { '/etc/postern/postern.yaml': config, ...opts.files };
  for (const [unitPath, text] of Object.entries(files)) {
    const at = mapped(unitPath);
    await mkdir(dirname(at), { recursive: true });
    await writeFile(at, text, { mode: 0o640 });
    await chown(at, 0, SERVICE_USER.gid);
  }
  await groupReadable(mapped('/etc/postern'));
  await opts.prepare?.(mapped);

  const command = (line: string): string[] => line.replace(/^[-@+!]+/, '').split(/\s+/).map((w) => (w.startsWith('/') ? mapped(w) : w));
  const confined = (argv: string[]): string[] => [...namespace(unit, mapped), ...privileges(unit, root), ...resourceLimits(unit), ...argv];
  const env = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', HOME: mapped('/var/lib/postern'),
    ...(caches.length ? { CACHE_DIRECTORY: caches.map(mapped).join(':') } : {}),
  };
  for (const pre of unit.get('ExecStartPre') ?? []) {
    const argv = confined(command(pre));
    const r = spawnSync(argv[0]!, argv.slice(1), { env, encoding: 'utf8', timeout: 120_000 });
    if (r.status !== 0) throw new Error(`ExecStartPre ${pre} failed (${r.status}): ${r.stderr}${r.stdout}`);
  }
  const notify = directive(unit, 'Type') === 'notify' ? await notifySocket(root) : null;
  const argv = confined(command(directive(unit, 'ExecStart')!));
  const proc = spawn(argv[0]!, argv.slice(1), { env: { ...env, ...notify?.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const notifications: string[] = [];
  // NotifyAccess=main (the default) takes only the main process's messages; all, any process's of the unit.
  // BARRIER=1 is systemd-notify's wait for systemd to have taken the message, not a state.
  notify?.lines((pid, line) => { if (line !== 'BARRIER=1' && (directive(unit, 'NotifyAccess') === 'all' || pid === proc.pid)) notifications.push(line); });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => { notify?.stop(); resolve(); }));
  const server = await (async () => {
    const watched = await watchServer(proc, { dir: root, dataDir: mapped('/var/lib/postern'), ports });
    // Type=notify: started once READY=1 came, within TimeoutStartSec (systemd's default 90 s).
    if (notify) await watched.waitFor('READY=1', () => notifications.includes('READY=1'), unitSeconds(directive(unit, 'TimeoutStartSec') ?? '90'));
    return watched;
  })().catch(async (err: unknown) => {
    // As systemd ends a start that failed: nothing of it outlives the test.
    if (proc.exitCode === null && proc.signalCode === null) { proc.kill('SIGKILL'); await exited; }
    notify?.stop();
    throw err;
  });
  return {
    ...server, root, path: mapped, notifications,
    // Whatever the test checked: the server wrote nothing outside ReadWritePaths (it would have met EROFS).
    async stop() {
      await server.stop();
      const outside = server.lines.filter((l) => /EROFS|read-only file system/i.test(l));
      if (outside.length) throw new Error(`the server tried to write outside the unit's ReadWritePaths:\n${outside.join('\n')}`);
    },
    // As systemd runs it: as the service's user, confined as the service is; `systemctl reload` fails when it does.
    // Not spawnSync: the server's log lines are read meanwhile.
    reload() {
      const argv = confined(command(directive(unit, 'ExecReload')!.replaceAll('$MAINPID', String(proc.pid))));
      const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 150_000 });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
      child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
      return new Promise((resolve, reject) => {
        child.once('error', reject);
        child.once('close', (status) => resolve({ status, stdout, stderr }));
      });
    },
  };
}

/** systemd's NOTIFY_SOCKET (test/helpers/notify-socket.py), the service's user may send to. */
async function notifySocket(root: string): Promise<{ env: Record<string, string>; lines(on: (pid: number, line: string) => void): void; stop(): void }> {
  const path = join(root, 'notify');
  const receiver = spawn('python3', [new URL('./notify-socket.py', import.meta.url).pathname, path, String(SERVICE_USER.uid)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const listeners: Array<(pid: number, line: string) => void> = [];
  let partial = '';
  const listening = new Promise<void>((resolve) => {
    receiver.stdout.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        const [pid, line] = [Number(l.slice(0, l.indexOf(' '))), l.slice(l.indexOf(' ') + 1)];
        if (line === 'LISTENING') resolve();
        else for (const on of listeners) on(pid, line);
      }
    });
  });
  await listening;
  return { env: { NOTIFY_SOCKET: path }, lines: (on) => listeners.push(on), stop: () => receiver.kill() };
}

/** Files root wrote into /etc/postern: group-readable for the service (what `install -m 0640 -g postern` gives). */
async function groupReadable(dir: string): Promise<void> {
  execFileSync('chgrp', ['-R', String(SERVICE_USER.gid), dir]);
  execFileSync('chmod', ['-R', 'g+rX', dir]);
}

/**
 * ProtectSystem=strict with ReadWritePaths=, StateDirectory= and CacheDirectory=: a mount namespace whose root is read-only, the
 * writable paths bound over themselves read-write (a `-` path that does not exist is skipped, as systemd does).
 */
function namespace(unit: Map<string, string[]>, mapped: (p: string) => string): string[] {
  if (directive(unit, 'ProtectSystem') !== 'strict') throw new Error('ProtectSystem= other than strict: emulate it');
  const writable = [
    ...(unit.get('ReadWritePaths') ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean),
    ...serviceDirectories(unit, 'State').map((p) => `-${p}`),
    ...serviceDirectories(unit, 'Cache').map((p) => `-${p}`),
  ].map((p) => ({ optional: p.startsWith('-'), path: p.replace(/^-/, '') }))
    .filter((p) => !p.optional || mappedOrNull(mapped, p.path) !== null)
    .map((p) => mapped(p.path))
    .filter((p) => existsSync(p));
  const binds = writable.map((p) => `mount --bind '${p}' '${p}' && mount -o remount,bind,rw '${p}'`).join(' && ');
  const umask = directive(unit, 'UMask') ?? '0022'; // systemd's default
  return ['unshare', '--mount', '--', 'sh', '-c', `mount --make-rprivate / && mount -o remount,bind,ro / ${binds ? `&& ${binds}` : ''} && umask ${umask} && exec "$@"`, 'sh'];
}

function mappedOrNull(mapped: (p: string) => string, p: string): string | null {
  try { return mapped(p); } catch { return null; }
}

/** User=, Group=, SupplementaryGroups=, the capabilities, NoNewPrivileges=, RestrictAddressFamilies=. */
function privileges(unit: Map<string, string[]>, root: string): string[] {
  const caps = (key: string): string[] => (unit.get(key) ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean).map((c) => c.replace(/^CAP_/, '').toLowerCase());
  const ambient = caps('AmbientCapabilities');
  const bounding = caps('CapabilityBoundingSet');
  const groups = (unit.get('SupplementaryGroups') ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean);
  if (groups.length) throw new Error('SupplementaryGroups=: map its groups to gids here');
  const out = ['setpriv', `--reuid=${SERVICE_USER.uid}`, `--regid=${SERVICE_USER.gid}`, '--clear-groups',
    `--inh-caps=-all${ambient.map((c) => `,+${c}`).join('')}`, `--ambient-caps=-all${ambient.map((c) => `,+${c}`).join('')}`,
    `--bounding-set=-all${bounding.map((c) => `,+${c}`).join('')}`];
  if (directive(unit, 'NoNewPrivileges') === 'yes') out.push('--no-new-privs');
  out.push('--');
  const families = (directive(unit, 'RestrictAddressFamilies') ?? '').split(/\s+/).filter(Boolean);
  if (families.length) {
    const numbers: Record<string, number> = { AF_UNIX: 1, AF_INET: 2, AF_INET6: 10, AF_NETLINK: 16, AF_PACKET: 17 };
    out.push(restrictAddressFamilies(root), families.map((f) => { if (!(f in numbers)) throw new Error(`${f}: add its number`); return numbers[f]; }).join(','), '--');
  }
  return out;
}

/** LimitCORE= (soft and hard, as systemd sets a single value), with prlimit. */
function resourceLimits(unit: Map<string, string[]>): string[] {
  const core = directive(unit, 'LimitCORE');
  return core === undefined ? [] : ['prlimit', `--core=${core}:${core}`, '--'];
}

/** test/helpers/restrict-address-families.c, built into `root`. */
function restrictAddressFamilies(root: string): string {
  const built = join(root, 'restrict-address-families');
  if (!existsSync(built)) execFileSync('gcc', ['-O2', '-o', built, new URL('./restrict-address-families.c', import.meta.url).pathname]);
  return built;
}

/** Whether this machine can run the emulation (root, unshare, setpriv, gcc; python3 and systemd-notify for Type=notify). */
export function unitEmulationSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (a mount namespace, setpriv)';
  for (const tool of ['unshare', 'setpriv', 'gcc', 'python3', 'systemd-notify']) if (spawnSync(tool, ['--version']).status !== 0) return `${tool} not installed`;
  if (spawnSync('unshare', ['--mount', '--', 'true']).status !== 0) return 'no mount namespaces here';
  return false;
}

/**
 * What a new configuration asks for that only a restart applies, each named for the log and `postern status`:
 * - sockets bound once: listeners added, removed, moved or changing TLS mode or PROXY protocol (or the prefix their
 *   IPv6 clients' connections are counted by, which the supervisor counts at accept), a policy
 *   service's address and its unix socket's mode and owner, the account page's and the admin listener's;
 * - what is made once at start: the counter store (and its in-memory size), the data directory (spool, locks),
 *   the logger, the auth-failure window the counters keep, the admin listener's settings.
 * Compared with what is running: the reloader against the configuration its process started with, the
 * supervisor against the one it runs (which adds `workers` and `workerChoice`). A key missing here is
 * silently ignored at a reload: test/reload/every-key.test.ts names a reload decision for every key.
 */
import type { Config } from '../config/schema.ts';
import { storeIdentity } from '../store/index.ts';

type Compared = Pick<Config, 'listeners' | 'store'> & Partial<Config>;

export function restartNeeded(running: Compared, next: Compared): string[] {
  const out: string[] = [];
  for (const l of next.listeners) {
    const old = running.listeners.find((r) => r.name === l.name);
    if (!old) out.push(`new listener ${l.name} (${l.listen})`);
    else if (old.listen !== l.listen) out.push(`listener ${l.name} moves from ${old.listen} to ${l.listen}`);
    // Implicit TLS is the socket's from its first byte (smtp-server decides it once); none ↔ starttls is whether EHLO offers STARTTLS, applied at a reload.
    else if (implicit(old) !== implicit(l)) out.push(`listener ${l.name} changes tls.mode ${old.tls.mode} → ${l.tls.mode}`);
    // The supervisor decides at accept which addresses may send a header.
    else if (JSON.stringify(old.proxyProtocol ?? null) !== JSON.stringify(l.proxyProtocol ?? null)) out.push(`listener ${l.name} changes proxyProtocol`);
    // The supervisor counts the connections it accepts by it (the per-IP slots every worker's count is of).
    else if (old.limits.ipv6PrefixLength !== l.limits.ipv6PrefixLength) out.push(`listener ${l.name} changes limits.ipv6PrefixLength ${old.limits.ipv6PrefixLength} → ${l.limits.ipv6PrefixLength}`);
  }
  for (const r of running.listeners) if (!next.listeners.some((l) => l.name === r.name)) out.push(`listener ${r.name} removed`);
  // A policy service's socket is bound once too (its mode and owner set then); its other settings apply at the next request.
  const was = running.policyServices ?? [];
  const will = next.policyServices ?? [];
  for (const p of will) {
    const old = was.find((r) => r.name === p.name);
    if (!old) out.push(`new policy service ${p.name} (${p.listen})`);
    else if (old.listen !== p.listen) out.push(`policy service ${p.name} moves from ${old.listen} to ${p.listen}`);
    else if (p.listen.startsWith('unix:') && JSON.stringify(old.socket) !== JSON.stringify(p.socket)) out.push(`policy service ${p.name} changes socket ${JSON.stringify(old.socket)} → ${JSON.stringify(p.socket)}`);
  }
  for (const r of was) if (!will.some((p) => p.name === r.name)) out.push(`policy service ${r.name} removed`);
  if (storeIdentity(running.store) !== storeIdentity(next.store)) out.push('store changed');
  else if (!next.store.redis && running.store.maxKeys !== next.store.maxKeys) out.push(`store.maxKeys ${running.store.maxKeys} → ${next.store.maxKeys}`);
  // The account page's socket is bound once, like a listener's.
  if (running.accounts?.listen !== next.accounts?.listen) out.push(`accounts.listen ${running.accounts?.listen ?? 'off'} → ${next.accounts?.listen ?? 'off'}`);
  changed(out, 'dataDir', running.dataDir, next.dataDir);
  changed(out, 'log.level', running.log?.level, next.log?.level);
  changed(out, 'log.format', running.log?.format, next.log?.format);
  // The admin listener is made once with its settings (its socket, its per-address cap, its Host names).
  if (!running.admin || !next.admin) changed(out, 'admin', running.admin && 'on', next.admin && 'on');
  else for (const key of ['listen', 'maxConnectionsPerIp', 'ipv6PrefixLength', 'hosts'] as const) changed(out, `admin.${key}`, running.admin[key], next.admin[key]);
  // The failure counts are kept (per process and in the supervisor) for the longest window of any listener, set at start.
  changed(out, 'limits.authFailureWindowMs (the longest of the listeners)', longestAuthWindow(running), longestAuthWindow(next));
  return out;
}

const implicit = (l: { tls: { mode: string } }): boolean => l.tls.mode === 'implicit';

/** The window the auth-failure counts are kept for (engine/app/postern.ts, engine/cluster). */
export function longestAuthWindow(config: Pick<Config, 'listeners'>): number {
  return Math.max(1, ...config.listeners.map((l) => l.limits.authFailureWindowMs));
}

function changed(out: string[], key: string, was: unknown, now: unknown): void {
  const a = JSON.stringify(was ?? 'off');
  const b = JSON.stringify(now ?? 'off');
  if (a !== b) out.push(`${key} ${a} → ${b}`);
}

/**
 * What a process of the server is made with once and keeps until a restart, whatever the file says since: its
 * data directory, logger, counter store and the window its auth-failure counts are kept for. A worker the
 * supervisor starts again (after a crash) is given the server's (cluster/running-handoff.ts), not the file's: with the
 * file's it spooled into a data directory no queue process delivers from.
 */
export interface RunningSettings {
  /**
   * Each bound listener as started, where a restart alone applies a change: its TLS (to or from implicit), and what the
   * supervisor decides by at accept (restartNeeded above): whether its clients come with a PROXY header and from whom
   * (`proxyProtocol`, null: off), and the network an IPv6 client's slot is counted by (`ipv6PrefixLength`). Both are
   * absent in the settings of a supervisor of an earlier release.
   */
  listeners: Array<{ name: string; tls: Config['listeners'][number]['tls']; proxyProtocol?: Config['listeners'][number]['proxyProtocol'] | null; ipv6PrefixLength?: number }>;
  dataDir: string;
  log: Config['log'];
  store: Config['store'];
  authFailureWindowMs: number;
}

export function runningSettings(config: Config): RunningSettings {
  return {
    listeners: config.listeners.map((l) => ({ name: l.name, tls: l.tls, proxyProtocol: l.proxyProtocol ?? null, ipv6PrefixLength: l.limits.ipv6PrefixLength })),
    dataDir: config.dataDir, log: config.log, store: config.store, authFailureWindowMs: longestAuthWindow(config) };
}

/** `config` as this process runs it: its start-only keys those it started with (restartNeeded names the difference). */
export function keepRunning(config: Config, running: RunningSettings): void {
  config.dataDir = running.dataDir;
  config.log = running.log;
  config.store = running.store;
  // A process started again makes its listeners' servers anew: one to or from implicit TLS would not speak as the socket it is handed.
  for (const l of config.listeners) {
    const started = running.listeners.find((r) => r.name === l.name);
    if (!started) continue;
    if (implicit(started) !== implicit(l)) l.tls = started.tls;
    // As the supervisor and the other processes take the listener's connections, whatever the file says since: a
    // worker started again after such an edit (a crash, a hang) read a PROXY header where none comes (or took the
    // balancer's for SMTP), and looked for each handed slot under a key of another prefix, found none and greeted
    // every IPv6 connection as its client's first (maxConnectionsPerIp held no more).
    if (started.proxyProtocol !== undefined) {
      if (started.proxyProtocol === null) delete l.proxyProtocol;
      else l.proxyProtocol = started.proxyProtocol;
    }
    if (started.ipv6PrefixLength !== undefined) l.limits.ipv6PrefixLength = started.ipv6PrefixLength;
  }
}

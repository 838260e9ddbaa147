/**
 * Ports this process could not bind: below the system's first unprivileged port (1024 unless
 * net.ipv4.ip_unprivileged_port_start says otherwise) without root or CAP_NET_BIND_SERVICE. `postern check` binds
 * nothing, so it cannot know whether `postern serve` will get a port; this much it can tell, for a server run as
 * the user (and with the capabilities) that runs the check, as a systemd unit's ExecStartPre does.
 */
import { readFileSync } from 'node:fs';
import type { Config } from './schema.ts';

const CAP_NET_BIND_SERVICE = 10n;

/** One per socket of `config` whose port this process may not bind, with its key's path; none when it may bind any. */
export function privilegedPortWarnings(config: Config): Array<{ path: PropertyKey[]; message: string }> {
  const first = firstUnprivilegedPort();
  if (first === 0 || mayBindAny()) return [];
  type Bind = [PropertyKey[], string];
  const binds: Bind[] = [
    ...config.listeners.map((l, i): Bind => [['listeners', i, 'listen'], l.listen]),
    ...config.policyServices.map((p, i): Bind => [['policyServices', i, 'listen'], p.listen]),
    ...(config.accounts ? [[['accounts', 'listen'], config.accounts.listen] as Bind] : []),
    ...(config.admin ? [[['admin', 'listen'], config.admin.listen] as Bind] : []),
  ];
  const out: Array<{ path: PropertyKey[]; message: string }> = [];
  for (const [path, listen] of binds) {
    if (listen.startsWith('unix:')) continue;
    const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
    if (port > 0 && port < first) out.push({ path, message: `port ${port} is below ${first}: this user cannot bind it (no root, no CAP_NET_BIND_SERVICE), so postern serve run like this check would fail (EACCES)` });
  }
  return out;
}

function firstUnprivilegedPort(): number {
  try {
    return Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());
  } catch {
    return 1024;
  }
}

function mayBindAny(): boolean {
  if (process.getuid?.() === 0 && process.platform !== 'linux') return true;
  try {
    const effective = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
    return effective !== undefined && ((BigInt(`0x${effective}`) >> CAP_NET_BIND_SERVICE) & 1n) === 1n;
  } catch {
    return process.getuid?.() === 0;
  }
}

/**
 * What to add to a bind's error when it is the kernel refusing a port below the first unprivileged one to this
 * user: `listen EACCES: permission denied 127.0.0.1:25` alone reads like a file's permission, and says nothing of
 * the capability that would give it. '' for any other failure.
 */
export function privilegedPortHint(listen: string, err: unknown): string {
  if ((err as NodeJS.ErrnoException | null)?.code !== 'EACCES' || listen.startsWith('unix:')) return '';
  const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
  const first = firstUnprivilegedPort();
  if (!(port > 0 && port < first)) return '';
  return `: port ${port} is below ${first}, which only root or a process with CAP_NET_BIND_SERVICE may bind (the systemd unit gives it: AmbientCapabilities=CAP_NET_BIND_SERVICE)`;
}

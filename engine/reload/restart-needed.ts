/**
 * What a new configuration asks for that only a restart applies: listeners added, removed, moved or
 * changing TLS mode or PROXY protocol (their sockets are bound once) or the prefix their IPv6 clients' connections
 * are counted by, and the counter store (made once at start).
 * Compared with what is running: the reloader against its generation, the supervisor against the
 * listeners it has actually bound. The account page's address is bound once too.
 */
import type { Config } from '../config/schema.ts';
import { storeIdentity } from '../store/index.ts';

export function restartNeeded(
  running: Pick<Config, 'listeners' | 'store'> & Partial<Pick<Config, 'policyServices' | 'accounts'>>,
  next: Pick<Config, 'listeners' | 'store'> & Partial<Pick<Config, 'policyServices' | 'accounts'>>,
): string[] {
  const out: string[] = [];
  for (const l of next.listeners) {
    const old = running.listeners.find((r) => r.name === l.name);
    if (!old) out.push(`new listener ${l.name} (${l.listen})`);
    else if (old.listen !== l.listen) out.push(`listener ${l.name} moves from ${old.listen} to ${l.listen}`);
    else if (old.tls.mode !== l.tls.mode) out.push(`listener ${l.name} changes tls.mode ${old.tls.mode} → ${l.tls.mode}`);
    // The supervisor decides at accept which addresses may send a header.
    else if (JSON.stringify(old.proxyProtocol ?? null) !== JSON.stringify(l.proxyProtocol ?? null)) out.push(`listener ${l.name} changes proxyProtocol`);
    // The supervisor counts the connections it accepts by it (the per-IP slots every worker's count is of).
    else if (old.limits.ipv6PrefixLength !== l.limits.ipv6PrefixLength) out.push(`listener ${l.name} changes limits.ipv6PrefixLength ${old.limits.ipv6PrefixLength} → ${l.limits.ipv6PrefixLength}`);
  }
  for (const r of running.listeners) if (!next.listeners.some((l) => l.name === r.name)) out.push(`listener ${r.name} removed`);
  // A policy service's socket is bound once too; its other settings apply at the next request.
  const was = running.policyServices ?? [];
  const will = next.policyServices ?? [];
  for (const p of will) {
    const old = was.find((r) => r.name === p.name);
    if (!old) out.push(`new policy service ${p.name} (${p.listen})`);
    else if (old.listen !== p.listen) out.push(`policy service ${p.name} moves from ${old.listen} to ${p.listen}`);
  }
  for (const r of was) if (!will.some((p) => p.name === r.name)) out.push(`policy service ${r.name} removed`);
  if (storeIdentity(running.store) !== storeIdentity(next.store)) out.push('store changed');
  // The account page's socket is bound once, like a listener's.
  if (running.accounts?.listen !== next.accounts?.listen) out.push(`accounts.listen ${running.accounts?.listen ?? 'off'} → ${next.accounts?.listen ?? 'off'}`);
  return out;
}

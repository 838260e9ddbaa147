/**
 * Offline validation of a loaded configuration: listener TLS files, outbound TLS files (every
 * delivery.clientCertificates and delivery.caFiles entry, read by the queue runner's own loader), tables,
 * users file and every scripts folder. Returns all problems as `file:line:col: message` strings (outbound
 * TLS: `file: delivery.… key: message`), the same text a reload or the queue runner would log.
 */
import type { LoadedConfig } from '../config/load-config.ts';
import { loadTables } from '../policy/lookup-tables.ts';
import { loadUsersFile } from '../auth/users-file.ts';
import { checkScripts, loadScriptDirectory } from '../sandbox/index.ts';
import { loadListenerTls } from '../smtp/listener-options.ts';
import { checkOutboundTls } from '../delivery/outbound-tls.ts';

export async function validateGeneration(loaded: LoadedConfig, warnings: string[] = []): Promise<string[]> {
  const config = loaded.config;
  const problems: string[] = [];
  const attempt = async (fn: () => Promise<unknown>): Promise<void> => {
    try { await fn(); } catch (err) { problems.push(err instanceof Error ? err.message : String(err)); }
  };
  for (const l of config.listeners) await attempt(async () => warnings.push(...(await loadListenerTls(l)).warnings ?? []));
  await attempt(async () => {
    const outbound = await checkOutboundTls(config.delivery);
    problems.push(...outbound.errors, ...outbound.problems);
    warnings.push(...outbound.warnings);
  });
  await attempt(() => loadTables(config));
  if (config.users) await attempt(() => loadUsersFile(config.users!));
  const dirs = new Set([config.scripts, ...config.listeners.map((l) => l.scripts ?? config.scripts)]);
  for (const dir of dirs) {
    await attempt(async () => {
      const scripts = await loadScriptDirectory(dir);
      const errors = await checkScripts(scripts, { timeoutMs: config.sandbox.timeoutMs, memoryLimitMb: config.sandbox.memoryLimitMb });
      for (const e of errors) problems.push(String(e));
    });
  }
  return problems;
}

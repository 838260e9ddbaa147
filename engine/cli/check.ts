/**
 * `postern check`: build the generation a start or a reload would build (buildGeneration, the same code),
 * report every problem, start nothing. Stricter in one way only, by the builder's `strict` option: an
 * expired outbound client certificate fails the check, where a start or a reload only logs it (not with
 * `--before-start`).
 */
import { loadStartConfig } from '../config/start-config.ts';
import { DEMO_USER, developmentPkiDir } from '../config/default-config.ts';
import { writeDevelopmentPki } from '../certificates/index.ts';
import { ConfigError } from '../config/config-error.ts';
import { buildGeneration, GenerationError } from '../generation/build-generation.ts';
import { createLogger } from '../logging/logger.ts';
import { MemoryCounterStore } from '../store/index.ts';
import { EMBEDDED_DEFAULT, SERVE_READS_AGAIN, type LoadedConfig } from '../config/load-config.ts';
import { dataDirError } from '../config/data-dir-check.ts';
import { writableInputWarnings } from '../config/input-file-modes.ts';
import { readableSecretLines } from '../config/readable-secrets.ts';
import { privilegedPortWarnings } from '../config/privileged-ports.ts';
import { pkiPaths } from '../pki/layout.ts';
import { openToOthers, openToOthersWarning } from '../spool/data-dir-lock.ts';
import { located } from '../generation/generation-error.ts';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';

/**
 * `beforeStart`: the unit's ExecStartPre (examples/systemd), run before every start, restarts and reboots
 * included. It must refuse what `postern serve` refuses and no more: strict, a delivery certificate that lapsed
 * overnight kept the whole server from starting again, where serve itself only warns of it.
 */
export async function checkCommand(opts: { config?: string; beforeStart?: boolean }): Promise<number> {
  let temporary: string | null = null;
  try {
    const loaded = loadStartConfig({ configPath: opts.config });
    const pki = loaded.file === EMBEDDED_DEFAULT ? await withFreshDevelopmentPki(loaded) : null;
    temporary = pki?.dir ?? null;
    // What scripts log from their top level is not the check's output. Counters in this process's memory:
    // a top level that counts (rate(), counter()) runs as at a start, without touching the server's store.
    const store = new MemoryCounterStore();
    const built = await buildGeneration(pki?.loaded ?? loaded, { logger: createLogger('silent'), strict: !opts.beforeStart, store });
    await built.generation.dispose();
    await store.close();
    if (pki) built.warnings.unshift({ message: `${developmentPkiDir(loaded.config.dataDir)}: no development PKI yet: postern serve makes it on its first start (checked with a new one made aside)` });
    // A start also needs its data directory (a reload cannot change it, so the builder does not look).
    const dataDir = await dataDirError(loaded);
    if (dataDir) throw dataDir;
    // What the start warns of about it too: check is where an administrator looks for such things.
    const open = existsSync(loaded.config.dataDir) ? openToOthers(loaded.config.dataDir, undefined, { owner: false }) : null;
    if (open) built.warnings.push({ message: located(loaded, ['dataDir'], openToOthersWarning(loaded.config.dataDir, open)) });
    // Read here whatever it is (`--config <(generate)`), but serve refuses what is not a regular file.
    if (opts.config && !statSync(loaded.file).isFile()) built.warnings.push({ message: `${loaded.file}: not a regular file: checked as read now, but postern serve refuses it${SERVE_READS_AGAIN}` });
    for (const w of privilegedPortWarnings(loaded.config)) built.warnings.push({ message: located(loaded, w.path, w.message) });
    for (const message of readableSecretLines(loaded)) built.warnings.push({ message });
    for (const message of writableInputWarnings(loaded)) built.warnings.push({ message });
    for (const w of built.warnings) process.stderr.write(`warning: ${w.message}\n`);
    const n = loaded.config.listeners.length;
    const p = loaded.config.policyServices.length;
    process.stdout.write(`${loaded.file}: OK (${n} listener${n === 1 ? '' : 's'}${p ? `, ${p} policy service${p === 1 ? '' : 's'}` : ''})\n`);
    return 0;
  } catch (err) {
    if (err instanceof GenerationError) {
      for (const w of err.warnings) process.stderr.write(`warning: ${w.message}\n`);
      for (const line of err.lines) process.stderr.write(`${line}\n`);
    } else {
      process.stderr.write(`${err instanceof ConfigError ? err.message : String(err)}\n`);
    }
    return 1;
  } finally {
    if (temporary) await rm(temporary, { recursive: true, force: true });
  }
}

/**
 * The embedded default's listeners use the development PKI that `postern serve` makes in the data directory on
 * its first start (serve.ts), all new when its CA is not there (writeDevelopmentPki). Before that start, a check
 * would find no certificate where the start makes one: it builds with a PKI made the same way in a temporary
 * folder instead (never in the data directory). Null when the CA is there: its files are checked as they are.
 */
async function withFreshDevelopmentPki(loaded: LoadedConfig): Promise<{ loaded: LoadedConfig; dir: string } | null> {
  const home = developmentPkiDir(loaded.config.dataDir);
  if (existsSync(join(home, 'ca.crt')) && existsSync(join(home, 'ca.key'))) return null;
  const dir = await mkdtemp(join(tmpdir(), 'postern-check-pki-'));
  await writeDevelopmentPki(dir, { hostname: loaded.config.hostname, demoUser: DEMO_USER });
  const aside = (p: string): string => (p.startsWith(home + sep) ? join(dir, relative(home, p)) : p);
  const config = structuredClone(loaded.config);
  for (const l of config.listeners) {
    if (l.tls.cert) l.tls.cert = aside(l.tls.cert);
    if (l.tls.key) l.tls.key = aside(l.tls.key);
    l.tls.caFiles = l.tls.caFiles.map(aside);
    l.tls.crlFiles = l.tls.crlFiles.map(aside);
  }
  return { loaded: { ...loaded, config }, dir };
}

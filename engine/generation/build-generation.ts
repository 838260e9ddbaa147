/**
 * The one way a configuration becomes a running generation: lookup tables, users, one sandbox per scripts
 * folder, every listener's TLS material and the outbound client certificates and CA files. A start, a
 * reload and `postern check` all call buildGeneration, so a check refuses exactly what a reload (or a
 * start) would refuse, with the same text.
 *
 * Every part is read even after one has failed, so that one run reports every problem; when any fails,
 * whatever was built is released and one GenerationError lists them all, one `file[:line[:col]]: message`
 * per line.
 */
import { SHADOW_KEY_PREFIX, type CounterStore } from '../store/counter-store.ts';
import { prefixedStore } from '../store/prefixed-store.ts';
import { ScriptDns } from '../dns/script-dns.ts';
import type { LoadedConfig } from '../config/load-config.ts';
import { keyPath } from '../config/config-error.ts';
import { TlsFileError } from '../certificates/index.ts';
import type { Config, ListenerConfig } from '../config/schema.ts';
import { Sandbox, ScriptError, ScriptErrors, loadScriptDirectory, strayScriptFiles, HOOK_NAMES } from '../sandbox/index.ts';
import { loadTable, type LookupTable } from '../policy/lookup-tables.ts';
import { loadUsersFile } from '../auth/users-file.ts';
import { loadLocalRecipients, LocalRecipientsError, type LocalRecipients } from '../policy/local-recipients.ts';
import { domainKey } from '../policy/domain-key.ts';
import { serverCertificateDates } from '../certificates/server-certificate-dates.ts';
import { loadListenerTls, listenerSetup, listenerTlsKey } from '../smtp/listener-options.ts';
import type { ListenerSetup } from '../smtp/postern-server.ts';
import { checkOutboundTls, OutboundFileError } from '../delivery/outbound-tls.ts';
import { checkDkimKeys } from '../delivery/dkim.ts';
import { scriptText, type Logger } from '../logging/logger.ts';
import { PolicyGeneration } from '../policy/generation.ts';
import { checkScriptsFolder } from './scripts-folders.ts';
import { trustsEveryClient } from '../proxy-protocol/trusted-proxies.ts';
import { exposures } from '../config/exposure.ts';
import { pinTableDigests } from '../policy/pin-table-digests.ts';
import { unloadedCrls } from '../pki/crl-coverage.ts'; // not the index (the CA's issuing code)
import { pkiPaths } from '../pki/layout.ts';
import { NO_REVOKED_DEVICES, readRevokedDevices, readsRevokedDevices, type RevokedDevices } from '../pki/revoked-devices.ts';
import { dirname } from 'node:path';
import { GenerationError, located, policySocketLines } from './generation-error.ts';

export interface BuildOptions {
  /** Receives what scripts log from their top level, and the listeners' smtp-server logs. */
  logger: Logger;
  /**
   * `postern check`: an expired outbound client certificate is an error. A start and a reload only warn
   * (delivery still presents it and the next hop decides), so that a certificate expiring overnight
   * never stops a running server from reloading.
   */
  strict?: boolean;
  /** Set to what is being read now, for the message of a build that misses its deadline. */
  progress?: { step: string };
  /** The server's counter store (engine/store), for scripts' rate() and counter(); `postern check`'s own in memory. */
  store?: CounterStore;
  /** `postern try`: call the hooks a folder has no script for too, so their context can be shown (SandboxOptions.standIns). */
  standIns?: boolean;
  /**
   * A reload: the scripts folders the generation in force read (its scriptFolders). One of them gone is
   * refused even where a start would take its absence as "no scripts" (the default top-level `scripts`).
   */
  scriptFoldersInForce?: ReadonlySet<string>;
  /**
   * A reload: the configuration in force. A listener that already trusted pki.dir's CA without its CRL there is
   * warned about, not refused, once the CRL revokes something: a refused reload would keep the CRL from before
   * the revocation on every listener, so the revoked device would still get in everywhere.
   */
  configInForce?: Config;
  /** A reload: what the generation in force knew pki.dir revoked, kept when issued.json cannot be read now. */
  revokedDevicesInForce?: RevokedDevices;
}

/** Usable, but worth a log line (or a `warning:` line from `postern check`). */
export interface GenerationWarning {
  /** The listener whose files it concerns. */
  listener?: string;
  message: string;
}

export interface BuiltGeneration {
  generation: PolicyGeneration;
  /** Every listener of the configuration by name; a reload applies those that are running. */
  listeners: ReadonlyMap<string, ListenerSetup>;
  warnings: GenerationWarning[];
}

export { GenerationError, policySocketLines };

export async function buildGeneration(loaded: LoadedConfig, options: BuildOptions): Promise<BuiltGeneration> {
  const config = loaded.config;
  const progress = options.progress ?? { step: '' };
  const problems: string[] = [];
  const warnings: GenerationWarning[] = [];
  const failed = (err: unknown): void => { for (const line of problemLines(err)) if (!problems.includes(line)) problems.push(line); };

  progress.step = 'the tables and the users file';
  const tables = new Map<string, LookupTable>();
  // A file's problem names its file and line; the key that named the file is added (a file may be named by more than one).
  const failedFile = (key: PropertyKey[]) => (err: unknown): void => { for (const line of problemLines(err)) failed(namedBy(loaded, key, line)); };
  const loads = await Promise.allSettled(Object.entries(config.tables).map(([name, spec]) =>
    loadTable(name, spec).catch((err: unknown) => { failedFile(typeof spec === 'string' ? ['tables', name] : ['tables', name, 'file'])(err); return null; })));
  for (const r of loads) {
    if (r.status === 'fulfilled') { if (r.value) tables.set(r.value.name, r.value); }
    else failed(r.reason);
  }
  let users = new Map<string, string>();
  if (config.users) await loadUsersFile(config.users).then((u) => { users = u; }, failedFile(['users']));
  let localRecipients: LocalRecipients | null = null;
  if (config.localRecipients) {
    await loadLocalRecipients(config.localRecipients, config.recipientDelimiter).then((r) => { localRecipients = r; }, failedFile(['localRecipients']));
  }
  const unlisted = noLocalDomainListed(config, localRecipients);
  if (unlisted) failed(unlisted);
  else for (const message of recipientTableGaps(config, localRecipients)) warnings.push({ message: located(loaded, ['localRecipients'], message) });
  // Postfix sends a policy service no serial and checks no CRL: its revoked devices are matched by digest. The account
  // page ends the sessions of an account whose device was revoked as lost or stolen.
  let revokedDevices = NO_REVOKED_DEVICES;
  if (readsRevokedDevices(config)) {
    progress.step = `the revoked certificates of ${config.pki.dir}`;
    // Unreadable (a root-owned issued.json of an older release, mode 0600; a file half-copied to this node): the
    // revocations already known stay known, and it is said. Refusing the build would keep the older CRL everywhere.
    await readRevokedDevices(config.pki.dir).then((r) => { revokedDevices = r; }, (err: Error) => {
      revokedDevices = options.revokedDevicesInForce ?? NO_REVOKED_DEVICES;
      warnings.push({ message: `${config.pki.dir}: cannot read what it revoked (${err.message}): policy services cannot tell a certificate revoked since apart (Postfix sends no serial), nor the account page end the sessions of a device revoked as lost or stolen; make issued.json readable by the server's user` });
    });
  }

  // Scripts are compiled and their top level run even when a table failed (lookups of it find nothing), so
  // that their own errors are reported too; nothing built is kept unless everything is fine.
  const sandboxes = new Map<string, Sandbox>();
  // One resolver and cache for every scripts folder of this generation.
  const dns = new ScriptDns({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs ?? Math.max(1, Math.floor(config.sandbox.timeoutMs * 0.8)) });
  const log = options.logger.child({ component: 'script' });
  const dirs = new Set([config.scripts, ...[...config.listeners, ...config.policyServices].map((l) => l.scripts ?? config.scripts)]);
  const shadowStore = options.store && prefixedStore(options.store, SHADOW_KEY_PREFIX);
  const sandboxOf = async (dir: string, shadow: boolean): Promise<Sandbox> => {
    const scripts = await loadScriptDirectory(dir);
    return Sandbox.create({
      scripts,
      shadow,
      standIns: options.standIns && !shadow ? HOOK_NAMES : [],
      timeoutMs: config.sandbox.timeoutMs,
      memoryLimitMb: config.sandbox.memoryLimitMb,
      isolates: config.sandbox.isolates,
      isolatesPerClient: config.sandbox.isolatesPerClient,
      // Shadow calls never run on the event-loop thread: a slow or looping candidate must not hold up live sessions.
      fastPathMs: shadow ? 0 : config.sandbox.fastPathMs,
      host: {
        lookup: (table: string, key: string) => tables.get(table)?.get(key) ?? null,
        log: (cid: string | null, file: string, level: 'info' | 'warn' | 'error' | 'fatal', message: string) => log[level]({ cid, script: file, ...(shadow ? { shadow: true } : {}) }, scriptText(message)),
        // A shadow script's counters live apart from the live scripts' (its calls must not use up their limits).
        store: shadow && options.store ? shadowStore : options.store,
        dns,
      },
    });
  };
  // A configured folder that is gone or unreadable is refused, never taken for "no scripts" (scripts-folders.ts).
  const present = new Set<string>();
  const folderThere = async (dir: string): Promise<void> => {
    if (await checkScriptsFolder(dir, loaded, options.scriptFoldersInForce) === 'present') present.add(dir);
    for (const file of await strayScriptFiles(dir)) {
      warnings.push({ message: `${file}: not a hook's script, so it never runs (the hooks are ${HOOK_NAMES.map((h) => `${h}.ts`).join(', ')}, or .js, .mjs)` });
    }
  };
  for (const dir of dirs) {
    progress.step = `the scripts in ${dir}`;
    try {
      await folderThere(dir);
      sandboxes.set(dir, await sandboxOf(dir, false));
    } catch (err) {
      failed(err);
    }
  }
  // Shadow folders are checked like live ones: a candidate that does not compile fails the reload (and check).
  const shadows = new Map<string, Sandbox>();
  for (const dir of new Set(config.listeners.flatMap((l) => (l.shadowScripts ? [l.shadowScripts] : [])))) {
    progress.step = `the shadow scripts in ${dir}`;
    try {
      await folderThere(dir);
      shadows.set(dir, await sandboxOf(dir, true));
    } catch (err) {
      failed(err);
    }
  }

  // Every listener's files, also a new listener's (which needs a restart to open): a reload that took a
  // configuration the next start would refuse would only defer the failure to that restart.
  progress.step = 'the listeners\' TLS files';
  const listeners = new Map<string, ListenerSetup>();
  for (const [i, l] of config.listeners.entries()) {
    if (l.limits.connectionsPerIpInStore && !config.store.redis) {
      warnings.push({ listener: l.name, message: 'limits.connectionsPerIpInStore has no effect without store.redis: maxConnectionsPerIp is counted by this server alone' });
    }
    const everyone = l.proxyProtocol?.trusted.findIndex(trustsEveryClient) ?? -1;
    if (everyone >= 0) {
      warnings.push({ listener: l.name, message: located(loaded, ['listeners', i, 'proxyProtocol', 'trusted', everyone], `${l.proxyProtocol!.trusted[everyone]} trusts every address: any client can send a PROXY header naming any address, and so pass per-address limits and address checks in scripts; list only the balancers`) });
    }
    try {
      listeners.set(l.name, await prepareListener(l, config.pki.dir ? pkiPaths(config.pki.dir).crl : undefined, config.hostname, options.logger, warnings, (message) => located(loaded, ['listeners', i, 'tls', 'cert'], message)));
    } catch (err) {
      // A file that cannot be used is reported at the key (file and line) that names it.
      failed(err instanceof TlsFileError ? located(loaded, ['listeners', i, ...listenerTlsKey(l, err)], err.message) : err);
    }
  }

  for (const e of exposures(config)) warnings.push({ ...(e.name ? { listener: e.name } : {}), message: located(loaded, e.path, e.message) });
  for (const w of unboundLogins(config, sandboxes)) warnings.push({ listener: w.name, message: located(loaded, w.path, w.message) });
  const open = openLocalDomains(config, sandboxes);
  if (open) warnings.push({ message: located(loaded, ['localDomains'], open) });
  for (const w of await pinTableDigests(config, tables)) warnings.push({ listener: w.name, message: located(loaded, w.path, w.message) });
  // Revoked is revoked: a listener that trusts pki.dir's CA without its CRL would take back what pki revoke revoked.
  const gaps = config.pki.dir ? await unloadedCrls(config, config.pki.dir) : [];
  // The same gap in the configuration in force: refusing would only keep the older CRL on the other listeners too.
  const gapsInForce = new Set(gaps.length && options.configInForce && config.pki.dir ? (await unloadedCrls(options.configInForce, config.pki.dir)).map((u) => u.name) : []);
  for (const u of gaps) {
    const key = ['listeners', u.listener, 'tls', config.listeners[u.listener]!.tls.crlFiles.length ? 'crlFiles' : 'caFiles'];
    if (u.revoked && gapsInForce.has(u.name)) warnings.push({ listener: u.name, message: located(loaded, key, `trusts the CA of ${dirname(u.crl)} but does not load its CRL ${u.crl}, which revokes ${u.revoked} certificate${u.revoked === 1 ? '' : 's'}: here they still verify (log in, relay); add it to tls.crlFiles (this reload is taken all the same, so that the other listeners apply the CRL; a start or postern check refuses it)`) });
    else if (u.revoked) failed(located(loaded, key, `trusts the CA of ${dirname(u.crl)} but does not load its CRL ${u.crl}, which revokes ${u.revoked} certificate${u.revoked === 1 ? '' : 's'}: here they would still verify (log in, relay); add it to tls.crlFiles`));
    else warnings.push({ listener: u.name, message: located(loaded, key, `trusts the CA of ${dirname(u.crl)} but does not load its CRL ${u.crl}: a certificate revoked by postern pki revoke or the account page would still verify here; add it to tls.crlFiles`) });
  }

  // A policy service's unix socket that the start could not make (a reload's too: it would only defer the failure).
  progress.step = 'the policy services\' sockets';
  for (const line of await policySocketLines(loaded)) failed(line);

  // Outbound certificates are part of the configuration too: a half-rotated key pair is refused like a listener's.
  progress.step = 'delivery\'s TLS files';
  const outbound = await checkOutboundTls(config.delivery);
  for (const err of outbound.failures) failed(err instanceof OutboundFileError ? located(loaded, err.path, err.fileProblem) : err);
  for (const f of outbound.problems) {
    const line = located(loaded, f.path, f.fileProblem);
    if (options.strict) failed(line);
    else warnings.push({ message: line });
  }
  for (const f of outbound.warnings) warnings.push({ message: located(loaded, f.path, f.fileProblem) });
  progress.step = 'delivery\'s DKIM keys';
  for (const line of await checkDkimKeys(config.delivery)) failed(line);

  if (problems.length) {
    await Promise.all([...sandboxes.values(), ...shadows.values()].map((s) => s.dispose()));
    throw new GenerationError(loaded.file, problems, warnings);
  }
  return { generation: new PolicyGeneration(loaded, tables, users, sandboxes, options.store, shadows, present, revokedDevices, localRecipients), listeners, warnings };
}

/**
 * Local domains whose every address is accepted: no recipient table, and a listener open to clients that have not
 * logged in whose scripts have no rcptto script that could check them. A dictionary attack with forged senders is
 * then accepted, fails at the next hop, and bounces to the innocent senders (backscatter). Said, not refused: a relay
 * in front of a catch-all means it. Not said where nothing bounces (delivery off: mail stays in the spool) nor for a
 * listener that requires AUTH (its clients are known: a typo of theirs bounces to them, not to a forged sender).
 */
function openLocalDomains(config: Config, sandboxes: ReadonlyMap<string, Sandbox>): string | null {
  if (config.localRecipients || !config.localDomains.length || !config.delivery.enabled) return null;
  const unchecked = config.listeners.filter((l) => !l.auth?.required && !sandboxes.get(l.scripts ?? config.scripts)?.scriptFile('rcptto'));
  if (!unchecked.length) return null;
  return `the local domains accept any recipient (listener${unchecked.length === 1 ? '' : 's'} ${unchecked.map((l) => l.name).join(', ')}): mail to addresses that do not exist is accepted and bounced later, to senders a spammer may have forged (backscatter); list the addresses in localRecipients (Postfix local_recipient_maps), or check them in an rcptto script`;
}

/**
 * A recipient table with no address of any local domain refuses every local recipient (550), as an emptied one does
 * (refused by loadLocalRecipients for that): every domain mistyped (`alice@exmaple.com`), or of domains not yet local.
 * Taken with a warning, all mail to the local domains bounced at its senders from that reload on.
 */
function noLocalDomainListed(config: Config, table: LocalRecipients | null): LocalRecipientsError | null {
  if (!table || !config.localDomains.length) return null;
  if (config.localDomains.some((d) => table.domains.has(domainKey(d) || d.toLowerCase()))) return null;
  return new LocalRecipientsError(table.file, undefined, `lists no address of any local domain (${config.localDomains.join(', ')}): every local recipient would be refused (550); its domains are ${[...table.domains].slice(0, 5).join(', ')}${table.domains.size > 5 ? ', …' : ''}`);
}

/**
 * What a recipient table leaves open or shut that its author likely did not mean: an entry of a domain that is not
 * local (never consulted: a typo in the domain, or one taken out of localDomains), and a local domain without any
 * entry (every recipient there refused).
 */
function recipientTableGaps(config: Config, table: LocalRecipients | null): string[] {
  if (!table) return [];
  const local = new Set(config.localDomains.map((d) => domainKey(d) || d.toLowerCase()));
  return [
    ...[...table.domains].filter((d) => !local.has(d)).map((d) => `${table.file} lists addresses of ${d}, which is not in localDomains: they are never consulted (a typo in the domain?)`),
    ...[...local].filter((d) => !table.domains.has(d)).map((d) => `${table.file} lists no address of the local domain ${d}: every recipient there is refused (550 5.1.1); list them, or \`@${d}\` to accept the whole domain`),
  ];
}

/** `atCert` puts a message at the line of the listener's `tls.cert`. */
async function prepareListener(l: ListenerConfig, pkiCrl: string | undefined, hostname: string, logger: Logger, warnings: GenerationWarning[], atCert: (message: string) => string): Promise<ListenerSetup> {
  const tls = await loadListenerTls(l, pkiCrl);
  for (const message of tls.warnings ?? []) warnings.push({ listener: l.name, message });
  const dates = tls.cert ? serverCertificateDates(l.tls.cert!, tls.cert) : null;
  if (dates) warnings.push({ listener: l.name, message: atCert(dates) });
  return listenerSetup(l, tls, hostname, logger);
}

/**
 * Listeners where clients log in (AUTH, a certificate's autoLogin) with nothing binding a login to its senders:
 * neither senderLogin.enforce nor a mailfrom script. Any account may then send as any other (MAIL FROM and From:
 * of the CEO), which Postfix also allows until smtpd_sender_login_maps is set; said, not refused, since a
 * server of one account, or a relay for devices that send for many, may mean it.
 */
function unboundLogins(config: Config, sandboxes: ReadonlyMap<string, Sandbox>): Array<{ name: string; path: PropertyKey[]; message: string }> {
  return config.listeners.flatMap((l, i) => {
    const logsIn = l.auth.mechanisms.length > 0 || l.certificateIdentity.autoLogin;
    const sandbox = sandboxes.get(l.scripts ?? config.scripts); // absent: its folder failed, already a problem
    if (!logsIn || l.senderLogin.enforce || !sandbox || sandbox.scriptFile('mailfrom')) return [];
    const path = l.auth.mechanisms.length ? ['listeners', i, 'auth', 'mechanisms'] : ['listeners', i, 'certificateIdentity', 'autoLogin'];
    return [{ name: l.name, path, message: 'clients log in here, but nothing binds a login to its senders: any account may send as any address, another user\'s included (MAIL FROM and From:); set senderLogin.enforce: true (Postfix reject_authenticated_sender_login_mismatch), or decide in a mailfrom script' }];
  });
}

/** `<config file>:<line>:<col>: <key path>: <message>`, as the configuration's own problems are written. */
/** One line per problem, each beginning with the file it is about. */
/** `line` (a problem of a file the configuration names) with that key and its place: `… (named by tables.blocked at postern.yaml:12:12)`. */
function namedBy(loaded: LoadedConfig, key: PropertyKey[], line: string): string {
  const at = loaded.locate?.(key) ?? {};
  const place = [loaded.file, at.line, at.line === undefined ? undefined : at.column].filter((p) => p !== undefined).join(':');
  return `${line} (named by ${keyPath(key)} at ${place})`;
}

function problemLines(err: unknown): string[] {
  if (typeof err === 'string') return [err];
  if (err instanceof ScriptErrors) return err.errors.map(String);
  if (err instanceof ScriptError) return [String(err)];
  return (err instanceof Error ? err.message : String(err)).split('\n');
}


#!/usr/bin/env node
/** Command line: `postern [serve]`, `check`, `config describe`, `status`, `queue`, `try`, `replay`, `pki`, `pins`, `hash-password`. Parsing only; work lives elsewhere. */
import '../app/threadpool.ts';
import '../app/timer-slack.ts';
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import type { DescribeOptions } from './config-describe.ts';
import type { TryOptions } from './try.ts';
import type { ReplayCliOptions } from './replay.ts';
import type { QueueAction, SelectionOptions } from './queue.ts';
import type { pkiCrlCommand, pkiInitCommand, pkiIssueCommand, pkiListCommand, pkiRevokeCommand } from './pki.ts';
import type { pinsAddCommand, pinsLearnCommand, pinsListCommand, pinsRemoveCommand } from './pins.ts';
// Not the sandbox's index: that loads isolated-vm, which only the commands that run scripts need.
import { exitMayHang, unrecoverableReasons } from '../sandbox/unrecoverable.ts';
import { syncsHung } from '../spool/sync-deadline.ts';

// Each command's module is loaded when it runs: `postern queue list` or `status` then loads what it reads
// (the configuration, the spool), not the server, its sandbox and its TLS stack (half the CPU of a command).
const serve = () => import('./serve.ts');
const check = () => import('./check.ts');
const configDescribe = () => import('./config-describe.ts');
const hashPassword = () => import('./hash-password.ts');
const status = () => import('./status.ts');
const reload = () => import('./reload.ts');
const tryHook = () => import('./try.ts');
const replay = () => import('./replay.ts');
const queueCommands = () => import('./queue.ts');
const pkiCommands = () => import('./pki.ts');
const pinsCommands = () => import('./pins.ts');

/**
 * End a one-shot command with process.exit() once stdout and stderr are flushed. Left to end on its own,
 * Node tears V8's heap down, where isolated-vm 7 can abort (`IsolateEnvironment::GetCurrent` assertion,
 * seen in a backtrace: a weak callback of an isolated-vm handle still in the young generation, run after
 * its environment is gone); process.exit() skips that teardown. `postern check` builds isolates.
 */
async function exitWith(code: number): Promise<never> {
  // A script stuck for good in a step V8 cannot interrupt parks an isolate thread, and process.exit() then
  // hangs or crashes in teardown (SIGSEGV). execve() ends every thread of the process without that teardown:
  // the process becomes `sh -c 'exit N'` (same pid, stdout/stderr kept) and ends with the command's own code.
  // So does a write of the spool the disk has not returned (`postern queue hold` on a disk that stopped answering):
  // Node's exit waits for the thread that made it, and the command said its error and then never returned.
  const stuck = exitMayHang() || syncsHung();
  await Promise.all([process.stdout, process.stderr].map((s) => new Promise<void>((resolve) => s.write('', () => resolve()))));
  if (stuck) {
    try {
      process.execve?.('/bin/sh', ['sh', '-c', `exit ${Math.trunc(code)}`]);
    } catch { /* not available here (no /bin/sh, another OS): the signal below */ }
    process.stderr.write(`postern: ${unrecoverableReasons()[0] ?? (syncsHung() ? 'a write of the spool has not returned (the disk)' : 'a script could not be stopped')}; ending with SIGKILL instead of exit ${code}\n`);
    process.kill(process.pid, 'SIGKILL');
  }
  process.exit(code);
}

// `npm run postern -- … --config x.yaml` and `npm --prefix /opt/postern start` run in the package's folder;
// relative paths mean what they meant where the command was typed (npm keeps that folder in INIT_CWD).
// Only for our own npm scripts: a process they start (a test, a child) inherits these variables too.
const OWN_NPM_SCRIPTS = new Set(['start', 'postern', 'check']);
if (process.env.npm_package_name === 'postern' && OWN_NPM_SCRIPTS.has(process.env.npm_lifecycle_event ?? '') && process.env.INIT_CWD) {
  process.chdir(process.env.INIT_CWD);
}

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command('postern')
  .description('Scriptable SMTP policy engine with TLS client-certificate authentication')
  .version(version, '-V, --version');

// `postern queue show ID | head`: once the reader is gone, a one-shot command stops quietly, as a shell
// tool does, instead of dying on EPIPE with a stack trace. (Not `serve`, whose stdout is its log.)
program.hook('preAction', (_program, command) => {
  if (command.name() === 'serve') return;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(0);
  });
});

program.command('serve', { isDefault: true })
  .description('run the server (without --config: the embedded development default)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action(async (opts: { config?: string }) => (await serve()).serveCommand(opts));

program.command('check')
  .description('validate a configuration, its scripts and tables without starting; exit 1 on errors')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--before-start', 'refuse only what postern serve refuses (a service manager\'s check before each start): an expired outbound client certificate is a warning')
  .action(async (opts: { config?: string; beforeStart?: boolean }) => exitWith(await (await check()).checkCommand(opts)));

const config = program.command('config').description('the configuration reference');
config.command('describe')
  .description('print every configuration key with its type, default and description')
  .option('--markdown', 'the tables of docs/configuration.md')
  .option('--json', 'the JSON Schema of postern.yaml')
  .option('--write-docs [file]', 'rewrite the generated tables in docs/configuration.md (or file)')
  .action(async (opts: DescribeOptions) => exitWith(await (await configDescribe()).configDescribeCommand(opts)));

program.command('status')
  .description('ask the running server for its state (exit 2 when its last reload was refused, 3 when it is not running)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--data-dir <dir>', 'the data directory the server runs with, when it is not the configuration\'s (dataDir changed since the server started)')
  .action(async (opts: { config?: string; dataDir?: string }) => exitWith(await (await status()).statusCommand(opts)));

program.command('reload')
  .description('reload the running server (SIGHUP) and wait for the outcome: exit 1 with its errors when it was refused (systemd ExecReload)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--data-dir <dir>', 'the data directory the server runs with, when it is not the configuration\'s')
  .option('--timeout <seconds>', 'give up waiting after this long (exit 4)', '120')
  .action(async (opts: { config?: string; dataDir?: string; timeout?: string }) => exitWith(await (await reload()).reloadCommand(opts)));

const queue = program.command('queue').description('inspect and manage the delivery queue (safe while the server runs)');
queue.command('list', { isDefault: true })
  .description('messages in the spool with their pending recipients and last errors; `!` marks a held one (Postfix mailq)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--json', 'machine-readable output')
  // The default: `postern queue hodl ID` reaches it, and is a mistyped command, not a listing.
  .allowExcessArguments()
  .action(async (opts: { config?: string; json?: boolean }, cmd: Command) => {
    if (cmd.args.length) {
      process.stderr.write(`postern: unknown queue command: ${cmd.args[0]} (see postern queue --help)\n`);
      return exitWith(1);
    }
    return exitWith(await (await queueCommands()).queueListCommand(opts));
  });
queue.command('summary')
  .description('messages by recipient domain and age in minutes (Postfix qshape)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--json', 'machine-readable output')
  .action(async (opts: { config?: string; json?: boolean }) => exitWith(await (await queueCommands()).queueSummaryCommand(opts)));
queue.command('show <id>')
  .description('one message: envelope, hold, attempts and errors, then the message itself (Postfix postcat)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('-e, --envelope', 'the envelope and delivery state only')
  .option('--json', 'the envelope and delivery state as JSON')
  .option('--message', 'with --json: print the message after it')
  .action(async (id: string, opts: { config?: string; message?: boolean; json?: boolean; envelope?: boolean }) => exitWith(await (await queueCommands()).queueShowCommand(id, opts)));
const selection = (cmd: ReturnType<typeof queue.command>, verb: string): typeof cmd => cmd
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--all', `${verb} every message in the queue`)
  .option('--from <address>', `${verb} messages from this sender (user@domain, domain, or <> for bounces)`)
  .option('--to <address>', `${verb} messages with this pending recipient (user@domain or domain)`)
  .option('--certificate <sha256>', `${verb} messages accepted with this client certificate: its SHA-256 fingerprint, or its key's (the pin: every certificate of the key)`);
const QUEUE_ACTIONS: Array<[QueueAction, string]> = [
  ['retry', 'make messages due now, held ones excepted (Postfix postqueue -f / -i / -s); the running server attempts them at its next scan'],
  ['delete', 'remove messages without delivering or bouncing them (Postfix postsuper -d)'],
  ['hold', 'put messages on hold: never delivered, across restarts, until released (Postfix postsuper -h)'],
  ['release', 'release held messages, due at once (Postfix postsuper -H)'],
];
for (const [op, description] of QUEUE_ACTIONS) {
  selection(queue.command(`${op} [ids...]`), op)
    .description(`${description}; \`-\` reads ids from stdin`)
    .action(async (ids: string[], opts: SelectionOptions) => exitWith(await (await queueCommands()).queueActionCommand(op, ids, opts)));
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];
program.command('try [hook]')
  .description('run a hook\'s script against given facts as the server would; print context, verdict, logs and the reply (exit 0 accept, 1 reject, 2 defer, 3 script error, 4 accepted on hold)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--listener <name>', 'the listener (default: the first)')
  .option('--scripts <dir>', 'try this scripts folder instead of the configured one')
  .option('--session <file>', 'play a session file (EHLO, AUTH, MAIL, RCPT, DATA …) through every hook in order')
  .option('--cert <file>', 'client certificate (PEM, chain after it; may hold the key too)')
  .option('--key <file>', 'its private key (the certificate is verified in a real handshake; without one, by openssl verify)')
  .option('--no-tls', 'do not STARTTLS on a STARTTLS listener')
  .option('--ip <address>', 'client address', '203.0.113.5')
  .option('--helo <name>', 'EHLO name')
  .option('--user <name>', 'logged-in user (with --password: a real AUTH, run through the auth hook)')
  .option('--password <password>', 'password for AUTH (every local user can read it in ps: prefer --password-file)')
  .option('--password-file <file>', 'password for AUTH: the first line of FILE, - for stdin')
  .option('--mechanism <name>', 'AUTH mechanism (default PLAIN, EXTERNAL with --cert and no --password)')
  .option('--authzid <name>', 'authorization identity for AUTH')
  .option('--from <address>', 'envelope sender (default: the null sender)')
  .option('--to <address>', 'envelope recipient (repeatable)', collect)
  .option('--header <line>', 'message header line for DATA (repeatable)', collect)
  .option('--message <file>', 'the message for DATA (instead of --header)')
  .option('--json', 'machine-readable output')
  .action(async (hook: string | undefined, opts: TryOptions) => exitWith(await (await tryHook()).tryCommand(hook, opts)));

program.command('replay')
  .description('run candidate scripts over the recorded traffic (replay: in the configuration) and summarize the decisions that would change (exit 1 when some do)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .requiredOption('--scripts <dir>', 'the candidate scripts folder (for the top-level scripts and every listener\'s)')
  .option('--policy-scripts <dir>', 'the candidate for the policy services\' scripts (without it, a policy service with a scripts folder of its own is replayed with that folder)')
  .option('--since <age>', 'only calls this recent, e.g. 90m, 24h, 7d')
  .option('--hook <hook>', 'only this hook')
  .option('--examples <n>', 'examples shown per group', '3')
  .option('--json', 'machine-readable output')
  .action(async (opts: ReplayCliOptions) => exitWith(await (await replay()).replayCommand(opts)));

const pki = program.command('pki').description('device certificates: a CA, issuing, listing and revoking (safe while the server runs)');
pki.command('init')
  .description('create a CA for device certificates: certificate, key (0600), empty CRL; prints the configuration lines')
  .requiredOption('--dir <dir>', 'the CA folder to create')
  .option('--name <name>', 'the CA\'s common name', 'Postern Mail CA')
  .option('--days <n>', 'lifetime in days', '3650')
  .option('--key <type>', 'ecdsa-p256, ed25519 or rsa-3072', 'ecdsa-p256')
  .option('--crl-days <n>', 'lifetime of each CRL written (its next update)', '365')
  .option('--json', 'machine-readable output')
  .action(async (opts: Parameters<typeof pkiInitCommand>[0]) => exitWith(await (await pkiCommands()).pkiInitCommand(opts)));
pki.command('issue <identity>')
  .description('issue a client certificate for IDENTITY (emailAddress, SAN e-mail, CN) and a device (OU): key, certificate, PEM and PKCS#12')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--dir <dir>', 'the CA folder (default: pki.dir of the configuration)')
  .option('--device <name>', 'the device\'s name (laptop, phone)', 'device')
  .option('--days <n>', 'lifetime in days', '730')
  .option('--key <type>', 'ecdsa-p256, ed25519 or rsa-3072', 'ecdsa-p256')
  .option('--email <address>', 'another SAN e-mail address (repeatable)', collect)
  .option('--san <address>', 'the same as --email', collect)
  .option('--p12-password-file <file>', 'the PKCS#12 password (first line); default: a generated one, printed once')
  .option('--legacy-p12', 'encrypt the PKCS#12 with 3DES and a SHA-1 MAC, for importers that refuse AES (Android before 12, old macOS/iOS)')
  .option('--out <dir>', 'where the device\'s files go (default: <CA folder>/devices)')
  .option('--json', 'machine-readable output')
  .action(async (identity: string, opts: Parameters<typeof pkiIssueCommand>[1] & { san?: string[] }) =>
    exitWith(await (await pkiCommands()).pkiIssueCommand(identity, { ...opts, email: [...opts.email ?? [], ...opts.san ?? []] })));
pki.command('list')
  .description('every certificate issued from the CA: identity, device, serial, expiry, revoked, last seen (expiring ones first)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--dir <dir>', 'the CA folder (default: pki.dir of the configuration)')
  .option('--identity <identity>', 'only this identity\'s certificates')
  .option('--json', 'machine-readable output')
  .action(async (opts: Parameters<typeof pkiListCommand>[0]) => exitWith(await (await pkiCommands()).pkiListCommand(opts)));
pki.command('revoke <what>')
  .description('revoke by SERIAL, certificate FILE or IDENTITY (--device NAME): rewrites the CRL, which the running server applies at once')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--dir <dir>', 'the CA folder (default: pki.dir of the configuration)')
  .option('--device <name>', 'WHAT is an identity: its certificates for this device')
  .option('--all', 'WHAT is an identity: all of its certificates')
  .option('--reason <reason>', 'unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn, cACompromise')
  .option('--json', 'machine-readable output')
  .action(async (what: string, opts: Parameters<typeof pkiRevokeCommand>[1]) => exitWith(await (await pkiCommands()).pkiRevokeCommand(what, opts)));
pki.command('crl')
  .description('sign the CRL anew (same entries, next number, next update moved on): run it from a timer well before the next update')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--dir <dir>', 'the CA folder (default: pki.dir of the configuration)')
  .option('--json', 'machine-readable output')
  .action(async (opts: Parameters<typeof pkiCrlCommand>[0]) => exitWith(await (await pkiCommands()).pkiCrlCommand(opts)));

const pins = program.command('pins').description('the pin table of a listener (certificateIdentity.pins), as mox\'s config tlspubkey');
pins.command('add <identity> <cert-or-pin>')
  .description('pin the key of a certificate or public-key PEM file (or a pin: hex, colon hex, base64, base64url) for IDENTITY')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--listener <name>', 'whose pin table, a listener\'s or a policy service\'s (needed when they use different ones)')
  .option('--device <name>', 'the device\'s name, kept in a comment above the line')
  .option('--sender <address>', 'a further envelope sender this key may use (repeatable)', collect)
  .option('--force', 'pin it even though the key already names another account (pinned elsewhere, issued, or seen): its device would sign in as IDENTITY too')
  .option('--json', 'machine-readable output')
  .action(async (identity: string, certOrPin: string, opts: Parameters<typeof pinsAddCommand>[2]) => exitWith(await (await pinsCommands()).pinsAddCommand(identity, certOrPin, opts)));
pins.command('list')
  .description('the pins with identity, device, date added and last seen')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--listener <name>', 'whose pin table (a listener or a policy service)')
  .option('--json', 'machine-readable output')
  .action(async (opts: Parameters<typeof pinsListCommand>[0]) => exitWith(await (await pinsCommands()).pinsListCommand(opts)));
pins.command('remove <what>')
  .description('remove a pin (a pin, a certificate file) or an identity\'s pins (with --device: that device\'s)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--listener <name>', 'whose pin table (a listener or a policy service)')
  .option('--device <name>', 'WHAT is an identity: only this device\'s pin')
  .option('--json', 'machine-readable output')
  .action(async (what: string, opts: Parameters<typeof pinsRemoveCommand>[1]) => exitWith(await (await pinsCommands()).pinsRemoveCommand(what, opts)));
pins.command('learn <id> [identity]')
  .description('pin the certificate of a recent connection (connection id from the log, or queue id); shows it, adds it with --yes')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--listener <name>', 'whose pin table (a listener or a policy service)')
  .option('--device <name>', 'the device\'s name')
  .option('--log <file>', 'the server\'s JSON log to search for the connection (- for stdin)')
  .option('--yes', 'add it (without: only show what would be added)')
  .option('--force', 'add it even though the key already names another account (pinned elsewhere, issued, or seen)')
  .option('--json', 'machine-readable output')
  .action(async (id: string, identity: string | undefined, opts: Parameters<typeof pinsLearnCommand>[2]) => exitWith(await (await pinsCommands()).pinsLearnCommand(id, identity, opts)));

program.command('hash-password')
  .description('read a password from stdin and print an argon2id hash for the users file')
  .action(async () => exitWith(await (await hashPassword()).hashPasswordCommand()));

await program.parseAsync(process.argv);

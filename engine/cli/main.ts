#!/usr/bin/env node
/** Command line: `postern [serve]`, `check`, `config describe`, `status`, `queue`, `try`, `replay`, `hash-password`. Parsing only; work lives elsewhere. */
import '../app/threadpool.ts';
import '../app/timer-slack.ts';
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { serveCommand } from './serve.ts';
import { checkCommand } from './check.ts';
import { configDescribeCommand, type DescribeOptions } from './config-describe.ts';
import { hashPasswordCommand } from './hash-password.ts';
import { statusCommand } from './status.ts';
import { tryCommand, type TryOptions } from './try.ts';
import { replayCommand, type ReplayCliOptions } from './replay.ts';
import { queueDeleteCommand, queueListCommand, queueRetryCommand, queueShowCommand, queueSummaryCommand } from './queue.ts';

/**
 * End a one-shot command with process.exit() once stdout and stderr are flushed. Left to end on its own,
 * Node tears V8's heap down, where isolated-vm 7 can abort (`IsolateEnvironment::GetCurrent` assertion,
 * seen in a backtrace: a weak callback of an isolated-vm handle still in the young generation, run after
 * its environment is gone); process.exit() skips that teardown. `postern check` builds isolates.
 */
async function exitWith(code: number): Promise<never> {
  await Promise.all([process.stdout, process.stderr].map((s) => new Promise<void>((resolve) => s.write('', () => resolve()))));
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

program.command('serve', { isDefault: true })
  .description('run the server (without --config: the embedded development default)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action((opts: { config?: string }) => serveCommand(opts));

program.command('check')
  .description('validate a configuration, its scripts and tables without starting; exit 1 on errors')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action(async (opts: { config?: string }) => exitWith(await checkCommand(opts)));

const config = program.command('config').description('the configuration reference');
config.command('describe')
  .description('print every configuration key with its type, default and description')
  .option('--markdown', 'the tables of docs/configuration.md')
  .option('--json', 'the JSON Schema of postern.yaml')
  .option('--write-docs [file]', 'rewrite the generated tables in docs/configuration.md (or file)')
  .action(async (opts: DescribeOptions) => exitWith(await configDescribeCommand(opts)));

program.command('status')
  .description('ask the running server for its state (exit 2 when its last reload was refused, 3 when it is not running)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action(async (opts: { config?: string }) => exitWith(await statusCommand(opts)));

const queue = program.command('queue').description('inspect and manage the delivery queue (safe while the server runs)');
queue.command('list')
  .description('messages in the spool with their pending recipients and last errors')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--json', 'machine-readable output')
  .action(async (opts: { config?: string; json?: boolean }) => exitWith(await queueListCommand(opts)));
queue.command('summary')
  .description('messages by recipient domain and age in minutes (Postfix qshape)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--json', 'machine-readable output')
  .action(async (opts: { config?: string; json?: boolean }) => exitWith(await queueSummaryCommand(opts)));
queue.command('show <id>')
  .description('one message\'s envelope and delivery state (--message: and its content)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--message', 'print the message too')
  .action(async (id: string, opts: { config?: string; message?: boolean }) => exitWith(await queueShowCommand(id, opts)));
queue.command('retry [id]')
  .description('make a message (or --all) due now; the running server picks it up at its next scan')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--all', 'every message in the queue')
  .action(async (id: string | undefined, opts: { config?: string; all?: boolean }) => exitWith(await queueRetryCommand(id, opts)));
queue.command('delete <id>')
  .description('remove a message without delivering or bouncing it')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action(async (id: string, opts: { config?: string }) => exitWith(await queueDeleteCommand(id, opts)));

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];
program.command('try [hook]')
  .description('run a hook\'s script against given facts as the server would; print context, verdict, logs and the reply (exit 0 accept, 1 reject, 2 defer, 3 script error)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .option('--listener <name>', 'the listener (default: the first)')
  .option('--scripts <dir>', 'try this scripts folder instead of the configured one')
  .option('--session <file>', 'play a session file (EHLO, AUTH, MAIL, RCPT, DATA …) through every hook in order')
  .option('--cert <file>', 'client certificate (PEM, chain after it; may hold the key too)')
  .option('--key <file>', 'its private key (the certificate is verified in a real handshake)')
  .option('--no-tls', 'do not STARTTLS on a STARTTLS listener')
  .option('--ip <address>', 'client address', '203.0.113.5')
  .option('--helo <name>', 'EHLO name')
  .option('--user <name>', 'logged-in user (with --password: a real AUTH, run through the auth hook)')
  .option('--password <password>', 'password for AUTH')
  .option('--mechanism <name>', 'AUTH mechanism (default PLAIN, EXTERNAL with --cert and no --password)')
  .option('--authzid <name>', 'authorization identity for AUTH')
  .option('--from <address>', 'envelope sender (default: the null sender)')
  .option('--to <address>', 'envelope recipient (repeatable)', collect)
  .option('--header <line>', 'message header line for DATA (repeatable)', collect)
  .option('--message <file>', 'the message for DATA (instead of --header)')
  .option('--json', 'machine-readable output')
  .action(async (hook: string | undefined, opts: TryOptions) => exitWith(await tryCommand(hook, opts)));

program.command('replay')
  .description('run candidate scripts over the recorded traffic (replay: in the configuration) and summarize the decisions that would change (exit 1 when some do)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .requiredOption('--scripts <dir>', 'the candidate scripts folder')
  .option('--since <age>', 'only calls this recent, e.g. 90m, 24h, 7d')
  .option('--hook <hook>', 'only this hook')
  .option('--examples <n>', 'examples shown per group', '3')
  .option('--json', 'machine-readable output')
  .action(async (opts: ReplayCliOptions) => exitWith(await replayCommand(opts)));

program.command('hash-password')
  .description('read a password from stdin and print an argon2id hash for the users file')
  .action(async () => exitWith(await hashPasswordCommand()));

await program.parseAsync(process.argv);

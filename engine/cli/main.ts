#!/usr/bin/env node
/** Command line: `postern [serve]`, `check`, `status`, `hash-password`. Parsing only; work lives elsewhere. */
import '../app/threadpool.ts';
import { Command } from 'commander';
import { serveCommand } from './serve.ts';
import { checkCommand } from './check.ts';
import { hashPasswordCommand } from './hash-password.ts';
import { statusCommand } from './status.ts';

const program = new Command('postern')
  .description('Scriptable SMTP policy engine with TLS client-certificate authentication');

program.command('serve', { isDefault: true })
  .description('run the server (without --config: the embedded development default)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action((opts: { config?: string }) => serveCommand(opts));

program.command('check')
  .description('validate a configuration, its scripts and tables without starting; exit 1 on errors')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action(async (opts: { config?: string }) => { process.exitCode = await checkCommand(opts); });

program.command('status')
  .description('show the running server\'s reload status (exit 2 when the last reload failed)')
  .option('-c, --config <file>', 'configuration file (postern.yaml)')
  .action(async (opts: { config?: string }) => { process.exitCode = await statusCommand(opts); });

program.command('hash-password')
  .description('read a password from stdin and print an argon2id hash for the users file')
  .action(async () => { process.exitCode = await hashPasswordCommand(); });

await program.parseAsync(process.argv);

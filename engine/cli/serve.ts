/**
 * `postern serve`: start, print how to connect, stop cleanly on SIGINT/SIGTERM. Without --config the
 * embedded default runs and its development PKI is created under data/pki on first start.
 */
import { join } from 'node:path';
import { startPostern } from '../app/postern.ts';
import { ConfigError } from '../config/config-error.ts';
import { DEMO_USER } from '../config/default-config.ts';
import { writeDevelopmentPki } from '../certificates/index.ts';
import { printQuickStart } from './quick-start.ts';

export async function serveCommand(opts: { config?: string }): Promise<void> {
  const embedded = !opts.config;
  try {
    const running = await startPostern({
      configPath: opts.config,
      async prepare(loaded) {
        if (!embedded) return;
        const pki = await writeDevelopmentPki(join(loaded.config.dataDir, 'pki'), { hostname: loaded.config.hostname, demoUser: DEMO_USER });
        printQuickStart(pki, new Map(loaded.config.listeners.map((l) => [l.name, l.listen])));
      },
    });
    const stop = async (signal: string): Promise<void> => {
      running.runtime.logger.info({ signal }, 'shutting down');
      await running.close();
      process.exit(0);
    };
    process.on('SIGHUP', () => void running.reloader.reload('SIGHUP'));
    process.once('SIGINT', () => void stop('SIGINT'));
    process.once('SIGTERM', () => void stop('SIGTERM'));
  } catch (err) {
    process.stderr.write(`postern: ${err instanceof ConfigError ? `configuration refused:\n${err.message}` : (err as Error).message}\n`);
    process.exit(1);
  }
}

/** Postern under benchmark (a) with scripts on every context or (b) without scripts, in its own process. */
import '../../engine/app/threadpool.ts';
import '../../engine/app/timer-slack.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';

const { configText, baseDir } = JSON.parse(process.argv[2]!) as { configText: string; baseDir: string };
await startPostern({ configText, baseDir, logger: createLogger(process.env.BENCH_LOG_LEVEL ?? 'warn') }); // BENCH_LOG_LEVEL=info: with every decision's log line
process.on('SIGINT', () => process.exit(0));
process.send?.('ready');

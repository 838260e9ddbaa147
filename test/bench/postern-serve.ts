/**
 * Postern under benchmark as `postern serve` with `workers: N`: the supervisor in this process, N worker
 * processes and the queue process beside it (their CPU is counted with this process's: see treeCpuSeconds).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Supervisor } from '../../engine/cluster/supervisor.ts';

const { configText, baseDir, workers } = JSON.parse(process.argv[2]!) as { configText: string; baseDir: string; workers: number };
const configPath = join(baseDir, 'postern.yaml');
await writeFile(configPath, `${configText}\nworkers: ${workers}\nlog: { level: ${process.env.BENCH_LOG_LEVEL ?? 'warn'} }\n`);
const supervisor = await Supervisor.start({ configPath });
// The bench ends servers with SIGKILL: the children see their channel close and stop by themselves.
process.on('SIGINT', () => void supervisor.stop().then(() => process.exit(0)));
process.send?.('ready');

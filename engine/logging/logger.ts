/**
 * The server's one pino logger: JSON lines with ISO-8601 times (for log shippers and people alike), or
 * `log.format: pretty` for a terminal. Components take children with `{ component }` bindings.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';
import { turnBufferedStdout } from './turn-buffered-stdout.ts';

export type { Logger } from 'pino';

export type LogFormat = 'json' | 'pretty';

export function createLogger(level: string, destination?: NodeJS.WritableStream, format: LogFormat = 'json'): Logger {
  const options = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  if (format === 'pretty') {
    return pino(options, pretty({ destination: destination ?? 1, colorize: !destination && process.stdout.isTTY, sync: true }));
  }
  return pino(options, destination ?? turnBufferedStdout());
}

/** The server's one pino logger. Components take children with `{ component }` bindings. */
import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino({ level, base: { pid: process.pid } }, destination ?? pino.destination({ fd: 1, sync: false }));
}

/**
 * Parses one YAML or JSON table (workerData: text and format) on a thread of its own, so that the event loop
 * serving mail never holds the parse (lookup-tables.ts), and hands back its entries a batch per request: one
 * message of them all would be decoded in one stretch on the main thread again.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { MappingError, mappingEntries, type Entry } from './mapping-entries.ts';

export type MappingReply = { entries: Entry[]; done: boolean } | { error: { line: number | undefined; message: string } };

/** Small enough that decoding one batch is a few milliseconds. */
const BATCH = 2000;

const { text, format } = workerData as { text: string; format: 'yaml' | 'json' };
const port = parentPort!;
let entries: Entry[] = [];
let next = 0;
const sendBatch = (): void => {
  const batch = entries.slice(next, next + BATCH);
  next += batch.length;
  port.postMessage({ entries: batch, done: next >= entries.length } satisfies MappingReply);
};
try {
  entries = mappingEntries(text, format);
  port.on('message', sendBatch);
  sendBatch();
} catch (err) {
  const line = err instanceof MappingError ? err.line : undefined;
  port.postMessage({ error: { line, message: err instanceof MappingError ? err.message : `cannot parse: ${(err as Error).message}` } } satisfies MappingReply);
}

/**
 * A node:test reporter that writes each failure's error as it happens (test/run.ts sends it to a file).
 * The spec reporter prints the details only at the end of the run, so a run stopped at test/run.ts's time
 * limit showed which tests had failed but not why.
 */
import { inspect } from 'node:util';

interface FailEvent {
  type: string;
  data: { name: string; file?: string; line?: number; details?: { error?: unknown } };
}

export default async function* failureDetails(source: AsyncIterable<FailEvent>): AsyncGenerator<string> {
  for await (const event of source) {
    if (event.type !== 'test:fail') continue;
    const { name, file, line, details } = event.data;
    yield `✖ ${name} (${file ?? '?'}:${line ?? '?'})\n${inspect(details?.error, { depth: 6 })}\n\n`;
  }
}

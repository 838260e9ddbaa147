/**
 * A node:test reporter: per test file, the sum of its top-level tests' times, longest first (test/run.ts prints
 * the first lines at the end of a run). What test/file-times.txt (test/run.ts's order) is kept up to date from.
 */
interface TestEvent {
  type: string;
  data: { nesting: number; file?: string; details?: { duration_ms?: number } };
}

export default async function* fileTimes(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  const seconds = new Map<string, number>();
  for await (const event of source) {
    if ((event.type !== 'test:pass' && event.type !== 'test:fail') || event.data.nesting !== 0 || !event.data.file) continue;
    const file = event.data.file.slice(event.data.file.lastIndexOf('/test/') + 1 || event.data.file.lastIndexOf('/examples/') + 1);
    seconds.set(file, (seconds.get(file) ?? 0) + (event.data.details?.duration_ms ?? 0) / 1000);
  }
  for (const [file, s] of [...seconds].sort((a, b) => b[1] - a[1])) yield `${s.toFixed(1).padStart(7)} s  ${file}\n`;
}

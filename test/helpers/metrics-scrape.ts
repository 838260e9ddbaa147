/** The admin listener's /metrics, fetched with curl (a real client) and read as `name{labels}` → value. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const curl = promisify(execFile);

export async function scrapeMetrics(port: number): Promise<Map<string, number>> {
  const { stdout } = await curl('curl', ['-sf', `http://127.0.0.1:${port}/metrics`]);
  const samples = new Map<string, number>();
  for (const line of stdout.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

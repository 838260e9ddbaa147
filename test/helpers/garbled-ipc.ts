/**
 * Preloaded (`--import`) into every process of a `postern serve` a test starts (the supervisor passes its Node options
 * on to its children): worker POSTERN_GARBLED_WORKER, once ready (its first 'fences' message), looks in the folder
 * POSTERN_GARBLED_DIR every 50 ms for a file `send-<name>.json` (a JSON array of messages), sends each to its
 * supervisor as a child of another release or one with a bug might (fields missing, or of another type), and renames
 * the file `sent-<name>.json`: the test writes the next file once that process has been dealt with.
 */
import { readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';

const env = process.env;
const dir = env.POSTERN_GARBLED_DIR;
if (env.POSTERN_ROLE === 'worker' && env.POSTERN_WORKER === env.POSTERN_GARBLED_WORKER && dir) {
  let started = false;
  process.on('message', (m: { t?: string }) => {
    if (started || m?.t !== 'fences') return;
    started = true;
    setInterval(() => {
      for (const name of readdirSync(dir).filter((n) => n.startsWith('send-'))) {
        const messages = JSON.parse(readFileSync(join(dir, name), 'utf8')) as object[];
        renameSync(join(dir, name), join(dir, name.replace(/^send-/, 'sent-')));
        for (const message of messages) process.send!(message);
      }
    }, 50).unref();
  });
}

// `postern pki`/`pins` commands and the account page take turns on a CA folder (withFolderLock), each waiting up
// to 15 s for the other. That wait was measured on the wall clock: a step forward (NTP after a wrong start)
// ended it at once ("held by process …"), an issue or revocation on the account page failing; a step back
// stretched it by the step (a day back: a command waiting a day). Run in a child whose wall clock libfaketime
// moves: it holds the folder's lock itself, waits for it again, steps its clock a day forward, then lets go.
// The waiter's next look comes before the release (Node runs the 50 ms poll before the later 500 ms timer).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LIBFAKETIME, needsFaketime } from '../helpers/faketime.ts';

const ENGINE = join(import.meta.dirname, '../../engine');

const CHILD = (dir: string, offsetFile: string): string => `
const { writeFileSync } = await import('node:fs');
const { withFolderLock } = await import(${JSON.stringify(join(ENGINE, 'pki/atomic-file.ts'))});
const { acquireDirectoryLock } = await import(${JSON.stringify(join(ENGINE, 'spool/data-dir-lock.ts'))});
const dir = ${JSON.stringify(dir)};
const lock = acquireDirectoryLock(dir, '.lock');
const waiter = withFolderLock(dir, async () => 'got the lock').catch((e) => 'failed: ' + e.message);
await new Promise((r) => setTimeout(r, 300)); // the waiter has begun its wait (had it not, the test could only pass)
writeFileSync(${JSON.stringify(offsetFile)}, '+1d\\n');
await new Promise((r) => setTimeout(r, 500));
lock.release();
process.stdout.write(await waiter + '\\n');
`;

test('the wall clock stepped a day forward while a CA folder\'s lock is awaited: it is still awaited, then taken', { skip: needsFaketime, timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-lock-clock-'));
  try {
    const folder = join(dir, 'ca');
    await mkdir(folder);
    const offsetFile = join(dir, 'offset');
    await writeFile(offsetFile, '+0\n');
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, ['--input-type=module', '--eval', CHILD(folder, offsetFile)], {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: { ...process.env, NODE_NO_WARNINGS: '1', LD_PRELOAD: LIBFAKETIME, FAKETIME_TIMESTAMP_FILE: offsetFile, FAKETIME_NO_CACHE: '1', FAKETIME_DONT_FAKE_MONOTONIC: '1' },
      });
      let text = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => { text += d; });
      child.once('error', reject);
      child.once('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`child exited ${code}: ${text}`))));
    });
    assert.equal(out.trim(), 'got the lock');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

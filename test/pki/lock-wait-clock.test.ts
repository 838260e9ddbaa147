// `postern pki`/`pins` commands and the account page take turns on a CA folder (withFolderLock), each waiting up
// to 15 s for the other. That wait was measured on the wall clock: a step forward (NTP after a wrong start)
// ended it at once ("held by process …"), an issue or revocation on the account page failing; a step back
// stretched it by the step (a day back: a command waiting a day). This test process holds the folder's lock;
// a child whose wall clock libfaketime moves waits for it. Each look of the waiter at the lock makes and removes
// its temporary `.lock.<pid>.tmp` in the folder, which an fs watch here sees, in the kernel's order of events:
// once the waiter has looked (its deadline is set), its clock steps a day forward and a marker file is made in the
// folder; the lock is let go only after the waiter has begun a second look after the marker, so at least one
// whole look (and the deadline check after it) ran on the stepped clock. No sleep: loaded or not, it proves it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { watch } from 'node:fs';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquireDirectoryLock } from '../../engine/spool/data-dir-lock.ts';
import { LIBFAKETIME, needsFaketime } from '../helpers/faketime.ts';
import { until } from '../helpers/wait.ts';

const ENGINE = join(import.meta.dirname, '../../engine');
const MARKER = 'clock-stepped';

const CHILD = (dir: string): string => `
const { withFolderLock } = await import(${JSON.stringify(join(ENGINE, 'pki/atomic-file.ts'))});
const dir = ${JSON.stringify(dir)};
process.stdout.write(await withFolderLock(dir, async () => 'got the lock').catch((e) => 'failed: ' + e.message) + '\\n');
`;

test('the wall clock stepped a day forward while a CA folder\'s lock is awaited: it is still awaited, then taken', { skip: needsFaketime, timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-lock-clock-'));
  const folder = join(dir, 'ca');
  await mkdir(folder);
  const offsetFile = join(dir, 'offset');
  await writeFile(offsetFile, '+0\n');
  // Every event of the folder, in order: the waiter's looks (its temporary file made, then removed) and the marker.
  const events: string[] = [];
  const watcher = watch(folder, (_type, name) => { if (name) events.push(name); });
  const lock = acquireDirectoryLock(folder, '.lock');
  try {
    const child = spawn(process.execPath, ['--input-type=module', '--eval', CHILD(folder)], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, NODE_NO_WARNINGS: '1', LD_PRELOAD: LIBFAKETIME, FAKETIME_TIMESTAMP_FILE: offsetFile, FAKETIME_NO_CACHE: '1', FAKETIME_DONT_FAKE_MONOTONIC: '1' },
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    const exited = new Promise<number | null>((resolve, reject) => { child.once('error', reject); child.once('close', resolve); });
    const look = `.lock.${child.pid}.tmp`;
    const looks = (after: number): number => events.slice(after).filter((e) => e === look).length;
    await until('the waiter\'s first look at the lock', () => looks(0) > 0 || out !== '', { timeoutMs: 60_000 });
    assert.equal(out, '', 'the waiter still waits');
    await writeFile(offsetFile, '+1d\n');
    await writeFile(join(folder, MARKER), 'the waiter\'s clock is a day ahead from here on\n');
    await until('the marker', () => events.includes(MARKER), { timeoutMs: 60_000 });
    // Four events of the waiter's file after the marker: whichever comes first (the removal of a look begun before
    // it, or a new look), a whole look and the start of the next one came after the step.
    await until('two looks begun after the step', () => looks(events.indexOf(MARKER)) >= 4 || out !== '', { timeoutMs: 60_000 });
    lock.release();
    assert.equal(await exited, 0);
    assert.equal(out.trim(), 'got the lock');
  } finally {
    lock.release();
    watcher.close();
    await rm(dir, { recursive: true, force: true });
  }
});

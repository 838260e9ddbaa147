// A table cut short in place is waited for until it stays unchanged (change-watcher.ts). SIGHUP takes it as it is:
// the administrator says it is whole. The wait must end there: it went on, `postern status` said it waited for a
// content already in force, and a table that keeps changing (a log-like file configured as a table, appended every
// second) held every later edit — a script saved in place included — for good. A real server (and postern serve), real files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { startCluster, ONE_WORKER, type ClusterStatus } from '../helpers/cluster.ts';
import { until } from '../helpers/wait.ts';
import { mailFromReply } from './helpers.ts';

const SCRIPT = `export default (ctx) => lookup('blocked', ctx.address.address) ? reject('blocked') : undefined;\n`;

const OLD = Array.from({ length: 300 }, (_, i) => `spam${i}@example.test spam\n`).join('');

test('SIGHUP ends the wait for a table cut short in place: status no longer says it waits, the next change is judged from what SIGHUP took', { timeout: 60_000 }, async () => {
  const s = await startTestServer({
    config: 'localDomains: [example.com]\ntables:\n  blocked: ./blocked\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0" }\n',
    files: { blocked: OLD }, scripts: { 'mailfrom.ts': SCRIPT },
  });
  const waits = (): number => s.logs.filter((l) => l.level === 30 && typeof l.msg === 'string' && l.msg.startsWith('waiting for ')).length;
  const table = join(s.dir, 'blocked');
  try {
    await writeFile(table, 'spam1@example.test spam\n'); // cut short in place, and written on
    await until('the wait for the table', () => s.reloader.status.data.settling !== null);
    await appendFile(table, 'spam2@example.test spam\n');
    const forced = await s.reloader.reload('SIGHUP');
    assert.ok(forced.ok && forced.changed);
    assert.equal(s.reloader.status.data.settling, null, 'status still says it waits for the table SIGHUP took');
    assert.equal(waits(), 1);
    // The table grows on (appended to, as a log is), and a script is saved in place: both are taken, not waited for.
    await appendFile(table, 'spam3@example.test spam\n');
    await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), SCRIPT.replace("reject('blocked')", "reject('blocked v2')"));
    await s.reloader.whenIdle();
    assert.equal(waits(), 1, 'a later change was waited for');
    assert.match(await mailFromReply(s, 'spam3@example.test'), /blocked v2/);
  } finally {
    await s.stop();
    await rm(s.dir, { recursive: true, force: true });
  }
});

test('postern serve: SIGHUP ends the supervisor\'s wait for a table cut short in place', { timeout: 120_000 }, async () => {
  // A wait no slow machine outlasts: only SIGHUP may end it here.
  const c = await startCluster({
    config: `${ONE_WORKER}tables:\n  blocked: ./blocked\n`, files: { blocked: OLD }, env: { POSTERN_SHRUNK_SETTLE_MS: '600000' },
  });
  try {
    const start = await c.waitFor('every process on the first table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 2 && r.converged && r;
    });
    await writeFile(join(c.dir, 'blocked'), 'spam1@example.test spam\n');
    await c.waitFor('the wait for the table', async () => ((await c.cluster()).reload as { settling?: string[] | null }).settling?.length);
    process.kill(c.proc.pid!, 'SIGHUP');
    await c.waitFor('the table in force everywhere, and no wait said', async () => {
      const r = (await c.cluster()).reload as ClusterStatus['reload'] & { settling?: string[] | null };
      return r.converged && Object.entries(r.processes).every(([name, p]) => p.generation !== start.processes[name]!.generation) && !r.settling;
    });
  } finally {
    await c.stop();
  }
});

// An input cut short in place (or removed) is waited for until it has stayed unchanged (half-written.test.ts). But
// the wait was judged again at every write by size alone: a table emptied by `generator > blocked` and written in
// parts was taken as soon as the part written reached the old size (the new table larger, its tail still to come),
// and a table removed then created again and written in parts (`rm blocked; generator > blocked`) was taken at its
// first part, as a smaller file renamed over it would be. Either way the half-written table became the running
// generation. Now an input seen cut short or gone is waited for until it stays unchanged, whatever its size; only a
// file renamed over it (never gone in between) ends the wait at once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';

const SCRIPT = `export default (ctx) => lookup('blocked', ctx.address.address) ? reject('blocked') : undefined;\n`;
const OLD = Array.from({ length: 300 }, (_, i) => `spam${i}@example.test spam\n`).join('');
/** The new table: 400 new senders first, then the old ones. */
const NEW = Array.from({ length: 400 }, (_, i) => `fresh${i}@example.test spam\n`).join('') + OLD;
/** Its first whole lines as long as OLD at least: a valid table with none of the old senders. */
const FIRST = NEW.slice(0, NEW.indexOf('\n', OLD.length - 1) + 1);

async function mailFrom(c: ClusterProcess, from: string): Promise<number> {
  const { SmtpTestClient } = await import('../helpers/smtp-client.ts');
  const client = await SmtpTestClient.connect(c.port('in'));
  await client.read(30_000);
  await client.command('EHLO client.test');
  const r = await client.command(`MAIL FROM:<${from}>`);
  client.destroy();
  return r.code;
}

// One server for the three tests (each starts its own count of generations and of waits said). The first starts on
// OLD; the others put OLD back first by renaming it over (taken at once: what the last test shows).
// A wait that a slow machine cannot outlast between two of the tests' writes (the waits are driven by log lines).
let c: ClusterProcess;
let table: string;
before(async () => {
  c = await startCluster({
    config: `${ONE_WORKER}log: { level: debug }\ntables:\n  blocked: ./blocked\n`,
    scripts: { 'mailfrom.ts': SCRIPT }, files: { blocked: OLD }, env: { POSTERN_SHRUNK_SETTLE_MS: '600000' },
  });
  table = join(c.dir, 'blocked');
});
after(async () => { await c.stop(); });

type Reload = Awaited<ReturnType<ClusterProcess['cluster']>>['reload'] & { settling?: unknown };

/** Both processes on one generation, no wait going on; `from`: other generations than these. */
async function settledReload(what: string, from?: string): Promise<Reload> {
  return c.waitFor(what, async () => {
    const r = (await c.cluster()).reload as Reload;
    const generations = JSON.stringify(Object.values(r.processes).map((p) => p.generation));
    return Object.keys(r.processes).length === 2 && r.converged && !r.settling && generations !== from && r;
  });
}

const generationsOf = (r: Reload): string => JSON.stringify(Object.values(r.processes).map((p) => p.generation));

/** OLD in force again, the way the last test shows is taken at once: renamed over. */
async function oldTableBack(): Promise<void> {
  const before = generationsOf(await settledReload('the previous test\'s table in force'));
  await writeFile(`${table}.old`, OLD, { mode: 0o600 });
  await rename(`${table}.old`, table);
  await settledReload('the old table back in force', before);
  assert.equal(await mailFrom(c, 'fresh7@example.test'), 250);
}

/** Lines said from log index `from` on that begin a wait. */
const waitsSince = (from: number): number => c.logs.slice(from).filter((l) => typeof l.msg === 'string' && l.msg.startsWith('waiting for ')).length;

for (const how of ['emptied in place', 'removed and created again'] as const) {
  test(`postern serve: a blocklist ${how}, then written in parts: a part as large as the old table is not taken`, { timeout: 120_000 }, async () => {
    if (how !== 'emptied in place') await oldTableBack();
    const start = await settledReload('both processes on the first table');
    const from = c.logs.length;
    const generations = generationsOf(start);
    const reloaded = async (): Promise<boolean> => JSON.stringify(Object.values((await c.cluster()).reload.processes).map((p) => p.generation)) !== generations;
    const heldOrTaken = (n: number, what: string): Promise<string> =>
      c.waitFor(what, async () => (await reloaded() ? 'taken' : waitsSince(from) >= n ? 'held' : null));

    assert.equal(await mailFrom(c, 'spam7@example.test'), 550);
    if (how === 'emptied in place') await writeFile(table, '');
    else await rm(table);
    assert.equal(await heldOrTaken(1, `the table ${how}`), 'held');

    // As long as the old table, its tail (every old sender) still to come.
    await appendFile(table, FIRST);
    assert.equal(await heldOrTaken(2, 'the first part'), 'held', 'the first part (no old sender in it) became the running generation');
    assert.equal(await mailFrom(c, 'spam7@example.test'), 550, 'the old blocklist still answers');

    await appendFile(table, NEW.slice(FIRST.length));
    assert.equal(await heldOrTaken(3, 'the rest'), 'held', 'a file written in place is taken once unchanged, not at a size');
    // Whole: the administrator says so (SIGHUP), as the wait's log line advises; renamed over would do as well.
    process.kill(c.proc.pid!, 'SIGHUP');
    await c.waitFor('the whole table in force everywhere', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && await reloaded() && r;
    });
    // Said on failure (once in a loaded fresh-clone run fresh7 got 250, cause not found): which processes, and any replaced.
    const why = async (): Promise<string> => JSON.stringify({ processes: (await c.cluster()).processes.map((p) => ({ role: p.role, pid: p.pid, restarts: p.restarts })), reload: (await c.cluster()).reload });
    assert.equal(await mailFrom(c, 'fresh7@example.test'), 550, await why());
    assert.equal(await mailFrom(c, 'spam7@example.test'), 550, await why());
  });
}

test('postern serve: a table renamed over while a cut-short one is waited for is taken at once', { timeout: 120_000 }, async () => {
  await oldTableBack();
  await settledReload('both processes on the first table');
  const from = c.logs.length;
  await writeFile(table, 'spam1@example.test spam\n');
  await c.waitFor('the wait', () => waitsSince(from) > 0);
  await writeFile(`${table}.new`, NEW);
  await rename(`${table}.new`, table);
  await c.waitFor('the renamed table in force everywhere, the wait over', async () => {
    const r = (await c.cluster()).reload as Reload;
    return r.converged && !r.settling && await mailFrom(c, 'fresh7@example.test') === 550;
  });
  assert.equal(await mailFrom(c, 'spam7@example.test'), 550);
});

// A table written the common way — `generator > blocked` (the shell empties the file at once, the output comes
// later), a slow copy, a script writing in parts with pauses — is a valid file at every moment. After a 50 ms quiet
// period the emptied or half-written table became the running generation: an empty blocklist let spam through.
// Now an input that shrank since the content last taken waits until it has been unchanged for longer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';
import { runCli } from '../helpers/cli.ts';
import { startTestServer } from '../helpers/postern.ts';
import { mailFromReply } from './helpers.ts';

const SCRIPT = `export default (ctx) => lookup('blocked', ctx.address.address) ? reject('blocked') : undefined;\n`;
const OLD = Array.from({ length: 300 }, (_, i) => `spam${i}@example.test spam\n`).join('');
/** The new table: the old one and one more sender. */
const NEW = `${OLD}fresh@example.test spam\n`;

async function mailFrom(c: ClusterProcess, from: string): Promise<number> {
  const { SmtpTestClient } = await import('../helpers/smtp-client.ts');
  const client = await SmtpTestClient.connect(c.port('in'));
  await client.read(30_000);
  await client.command('EHLO client.test');
  const r = await client.command(`MAIL FROM:<${from}>`);
  client.destroy();
  return r.code;
}

test('postern serve: a blocklist emptied then written in parts with pauses is not taken until it is whole; the old one answers meanwhile', { timeout: 120_000 }, async () => {
  // A wait that a slow machine cannot outlast between two of the test's writes (the waits are driven by log lines).
  const c = await startCluster({
    config: `${ONE_WORKER}log: { level: debug }\ntables:\n  blocked: ./blocked\n`,
    scripts: { 'mailfrom.ts': SCRIPT }, files: { blocked: OLD }, env: { POSTERN_SHRUNK_SETTLE_MS: '600000' },
  });
  try {
    const table = join(c.dir, 'blocked');
    const start = await c.waitFor('both processes on the first table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 2 && r.converged && r;
    });
    const generations = JSON.stringify(Object.values(start.processes).map((p) => p.generation));
    const reloaded = async (): Promise<boolean> => JSON.stringify(Object.values((await c.cluster()).reload.processes).map((p) => p.generation)) !== generations;
    const waits = (): number => c.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('waiting for ')).length;
    /** Until the server says it waits for the `n`th state of the table, or a generation was built from it. */
    const heldOrTaken = (n: number, what: string): Promise<string> =>
      c.waitFor(what, async () => (await reloaded() ? 'taken' : waits() >= n ? 'held' : null));

    assert.equal(await mailFrom(c, 'spam7@example.test'), 550);
    await writeFile(table, ''); // `generator > blocked`: emptied at once
    assert.equal(await heldOrTaken(1, 'the emptied table'), 'held', 'the emptied table became the running generation');
    assert.equal(await mailFrom(c, 'spam7@example.test'), 550, 'the old blocklist still answers');
    // cluster.json is written after the log line (on a loaded machine it was read between the two): waited for.
    const settling = await c.waitFor('the wait in cluster.json', async () => ((await c.cluster()).reload as { settling?: string[] | null }).settling?.[0]);
    assert.match(String(settling), /blocked \(\d+ → 0 bytes\)/);
    const status = await runCli(['status', '-c', join(c.dir, 'postern.yaml')]);
    assert.match(String((JSON.parse(status.stdout) as { summary?: string }).summary), /waiting for .*blocked .* to settle before reloading/, status.stdout);

    await appendFile(table, NEW.slice(0, 1000)); // the first part, then a pause
    assert.equal(await heldOrTaken(2, 'the first part'), 'held', 'a third of the table became the running generation');
    await appendFile(table, NEW.slice(1000, 5000));
    assert.equal(await heldOrTaken(3, 'the second part'), 'held', 'most of the table became the running generation');
    assert.equal(await mailFrom(c, 'spam290@example.test'), 550, 'the old blocklist still answers');

    // Whole, and larger than before: still a file written in place, waited for until unchanged (the watcher cannot
    // tell its last part; half-written-regrown.test.ts). The administrator says it is whole: SIGHUP.
    await appendFile(table, NEW.slice(5000));
    assert.equal(await heldOrTaken(4, 'the last part'), 'held', 'a file written in place was taken at a size, not once unchanged');
    process.kill(c.proc.pid!, 'SIGHUP');
    await c.waitFor('the whole table in force everywhere', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && Object.values(r.processes).every((p) => p.generation !== start.processes[Object.keys(r.processes)[0]!]!.generation);
    });
    assert.equal(await mailFrom(c, 'fresh@example.test'), 550);
    assert.equal(await mailFrom(c, 'spam290@example.test'), 550);
    // One reload per process: none of the partial states was built.
    const after = (await c.cluster()).reload.processes;
    for (const [name, p] of Object.entries(after)) assert.equal(p.reloads, start.processes[name]!.reloads + 1, `${name} reloaded once`);
  } finally {
    await c.stop();
  }
});

test('a table cut short in place on purpose is taken once it has stayed unchanged; a smaller table renamed over is taken at once; SIGHUP does not wait', { timeout: 60_000 }, async () => {
  const s = await startTestServer({
    config: `localDomains: [example.com]\ntables:\n  blocked: ./blocked\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\n`,
    files: { blocked: OLD }, scripts: { 'mailfrom.ts': SCRIPT },
  });
  const waits = (): number => s.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('waiting for ') && String(l.msg).includes('blocked')).length;
  try {
    const outcomes: boolean[] = [];
    s.reloader.onReload((o) => outcomes.push(o.ok && o.changed));
    // Write-then-rename (what the docs advise, and how postern pki and the account page write): complete when it appears.
    await writeFile(`${s.dir}/blocked.new`, OLD.split('\n').slice(0, 100).join('\n') + '\n'); // spam0 … spam99
    await rename(`${s.dir}/blocked.new`, `${s.dir}/blocked`);
    await s.reloader.whenIdle();
    assert.deepEqual(outcomes, [true], 'one reload, of the smaller table');
    assert.equal(waits(), 0, 'a table renamed over is not waited for');
    assert.doesNotMatch(await mailFromReply(s, 'spam200@example.test'), /blocked/);
    assert.match(await mailFromReply(s, 'spam99@example.test'), /blocked/);

    // Cut short in place on purpose: waited for, then taken once (whenIdle waits through the wait).
    await writeFile(`${s.dir}/blocked`, 'spam1@example.test spam\n');
    await s.reloader.whenIdle();
    assert.deepEqual(outcomes, [true, true], 'one more reload, of the shortened table');
    assert.equal(waits(), 1, 'the wait was logged once');
    assert.match(await mailFromReply(s, 'spam1@example.test'), /blocked/);
    assert.doesNotMatch(await mailFromReply(s, 'spam2@example.test'), /blocked/);
    assert.equal(s.reloader.status.data.settling, null);

    // Emptied in place, then SIGHUP: the administrator says it is ready, so it is taken at once.
    await writeFile(`${s.dir}/blocked`, '');
    await new Promise<void>((resolve) => { const t = setInterval(() => { if (waits() === 2) { clearInterval(t); resolve(); } }, 10); });
    assert.doesNotMatch(String(s.reloader.status.data.settling), /^null$/);
    assert.match(await mailFromReply(s, 'spam1@example.test'), /blocked/, 'the running table answers while it is waited for');
    const forced = await s.reloader.reload('SIGHUP');
    assert.ok(forced.ok && forced.changed);
    assert.doesNotMatch(await mailFromReply(s, 'spam1@example.test'), /blocked/);
    await s.reloader.whenIdle();
    assert.equal(outcomes.length, 3, 'the end of the wait reloads nothing more');
  } finally {
    await s.stop();
    await rm(s.dir, { recursive: true, force: true });
  }
});

test('a script removed before its new version is copied in: the old one keeps deciding until the new one is there', { timeout: 60_000 }, async () => {
  const s = await startTestServer({
    config: `localDomains: [example.com]\ntables:\n  blocked: ./blocked\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\n`,
    files: { blocked: OLD }, scripts: { 'mailfrom.ts': SCRIPT },
  });
  const waits = (): number => s.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('waiting for ') && String(l.msg).includes('mailfrom.ts')).length;
  try {
    const outcomes: boolean[] = [];
    s.reloader.onReload((o) => outcomes.push(o.ok && o.changed));
    const script = join(s.dir, 'scripts', 'mailfrom.ts');
    await rm(script); // `rm mailfrom.ts && cp new/mailfrom.ts .`, the copy slow to come
    await new Promise<void>((resolve) => { const t = setInterval(() => { if (waits() === 1 || outcomes.length) { clearInterval(t); resolve(); } }, 10); });
    assert.deepEqual(outcomes, [], 'a generation without the mailfrom script (every sender accepted) was swapped in');
    assert.match(await mailFromReply(s, 'spam1@example.test'), /blocked/, 'the old script still decides');
    await writeFile(script, SCRIPT.replace("reject('blocked')", "reject('blocked v2')"));
    await s.reloader.whenIdle();
    assert.deepEqual(outcomes, [true], 'one reload, with the new script');
    assert.match(await mailFromReply(s, 'spam1@example.test'), /blocked v2/);
  } finally {
    await s.stop();
    await rm(s.dir, { recursive: true, force: true });
  }
});

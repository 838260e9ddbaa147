// A file the configuration names replaced by something that is not a regular file (a FIFO made by mistake, a
// tool's named pipe): opening it for reading blocks until a writer comes. A reload must refuse it at once, naming
// the file, keep the running generation, and go on reloading — for a table as for postern.yaml itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants } from 'node:fs';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { startCluster, workerPid, ONE_WORKER } from '../helpers/cluster.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';
import { MX_WITH_TABLE_CONFIG, mailFromReply, verdictScript } from './helpers.ts';

const CONFIG = MX_WITH_TABLE_CONFIG;

/** A FIFO at `file`, in place of what was there. */
function fifoAt(file: string): Promise<void> {
  return rm(file, { force: true }).then(() => { execFileSync('mkfifo', [file]); });
}

/** Ends a read blocked on the FIFO (as the code before the fix left one): a writer opens and closes it. */
async function releaseReaders(file: string): Promise<void> {
  const writer = await open(file, constants.O_WRONLY | constants.O_NONBLOCK).catch(() => null); // ENXIO: nobody reads
  await writer?.close();
}

function lastError(s: TestServer): string {
  return s.reloader.status.data.lastError?.join('\n') ?? '';
}

test('a table replaced by a FIFO: the reload is refused at once naming the table, the running generation decides, a file back reloads', async () => {
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v1') } });
  // Before the fix the build waited on the FIFO until its deadline and was reported as a top level that never returns.
  s.reloader.tuning.buildTimeoutMs = 20_000;
  const table = join(s.dir, 'senders');
  try {
    await fifoAt(table);
    await until('the reload refused', () => lastError(s) !== '', { timeoutMs: 60_000 });
    assert.match(lastError(s), new RegExp(`${table}: table "senders": cannot read: not a regular file`));
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 v1');

    await releaseReaders(table);
    await rm(table);
    await writeFile(table, 'a@example.com OK\n');
    await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), verdictScript('v2'));
    await s.reloader.whenIdle();
    assert.equal(s.reloader.status.data.lastError, null);
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 v2');
  } finally {
    await releaseReaders(table);
    await s.stop();
  }
});

test('postern.yaml replaced by a FIFO: the reload is refused naming it, and reloading goes on once a file is back', async () => {
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v1') } });
  const config = join(s.dir, 'postern.yaml');
  const text = await readFile(config, 'utf8');
  try {
    await fifoAt(config);
    // Before the fix the reload waited on the FIFO for ever, outside the build's deadline: no reload ever again.
    await until('the reload refused', () => lastError(s) !== '', { timeoutMs: 60_000 });
    assert.equal(lastError(s), `${config}: cannot read: not a regular file`);
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 v1');

    await releaseReaders(config);
    await rm(config);
    await writeFile(config, text);
    await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), verdictScript('v2'));
    await until('the edit in force', async () => (await mailFromReply(s.port('mx'))) === '550 5.7.1 v2', { timeoutMs: 60_000 });
    await s.reloader.whenIdle();
    assert.equal(s.reloader.status.data.lastError, null);
  } finally {
    await releaseReaders(config);
    await s.stop();
  }
});

test('postern serve, postern.yaml replaced by a FIFO: every process refuses it naming the file, and the supervisor goes on working', async () => {
  const c = await startCluster({ config: ONE_WORKER, scripts: { 'mailfrom.js': verdictScript('v1') } });
  const config = join(c.dir, 'postern.yaml');
  const text = await readFile(config, 'utf8');
  try {
    const pid = await workerPid(c, 0);
    await fifoAt(config);
    // Before the fix the supervisor read it for what to watch with a blocking open, on its event loop: it stopped
    // for good (no reload told, no worker replaced, no cluster.json written).
    const refused = await c.waitFor('the refusal in cluster.json', async () => {
      const r = (await c.cluster()).reload;
      return ['worker 0', 'queue 0'].every((p) => r.processes[p]?.lastError) && r.lastError;
    });
    assert.deepEqual(refused, [`${config}: cannot read: not a regular file`]);
    // postern status, run to see what is wrong, answers (it waited on the FIFO for ever) and says what is wrong
    // with the file (which alone names the data folder, so the server itself is not found).
    const status = await runCli(['status', '--config', config], { timeoutMs: 30_000 });
    assert.equal(status.signal, null, 'postern status ended by itself');
    assert.match(status.stderr, new RegExp(`${config}: cannot read: not a regular file`));
    // A worker lost meanwhile: the supervisor sees it and starts another, which cannot read the file either: it
    // ends with the reason on its stderr (exit code 1, retried with back-off) rather than wait on the FIFO for ever.
    const starts = c.logs.length;
    process.kill(pid, 'SIGKILL');
    await c.waitFor('the replacement refusing the FIFO', () => c.logs.slice(starts).some((l) => /exit code 1/.test(String(l.msg))));

    await releaseReaders(config);
    await rm(config);
    await writeFile(config, text);
    await writeFile(join(c.dir, 'scripts', 'mailfrom.js'), verdictScript('v2'));
    await c.waitFor('the edit in force', async () => (await mailFromReply(c.port('in'))) === '550 5.7.1 v2');
    await c.waitFor('no refusal left', async () => (await c.cluster()).reload.lastError === null);
  } finally {
    await releaseReaders(config);
    await c.stop();
  }
});

/**
 * A worker that sends its supervisor a message the supervisor cannot read (a field missing, or of another type: a bug,
 * or a child of another release after a package upgrade under a running server) is replaced, and the supervisor and
 * every other process go on. The supervisor acted on such messages as they came: a 'conn+' without its key, a 'conn-'
 * or 'lease-table' whose keys were no list, a 'reload-state' without its state threw in its event loop (the last at
 * the next status, from what it had kept) and ended it, and with it the whole server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, workerPid, TWO_WORKERS, ROUND_ROBIN, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { PolicyClient, rcptRequest } from '../policy-service/helpers/policy-client.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

/** Each batch sent by a new worker 1, with what the supervisor's log line must say of it. */
const BATCHES: Array<[object[], RegExp]> = [
  [[{ t: 'conn+', q: 1, ip: '192.0.2.1', limit: 1 }], /conn\+: key is missing/],
  [[{ t: 'conn-', keys: 5, s: 1 }], /conn-: keys is a value of type number/],
  [[{ t: 'lease-table', keys: 7 }], /lease-table: keys is a value of type number/],
  [[{ t: 'reload-state' }], /reload-state: state is missing/],
  [[{ t: 'metrics-last', metrics: 5 }, { t: 'authfail', ip: '192.0.2.1', at: 'now' }], /metrics-last: metrics is a value of type number/],
];

/**
 * Two SMTP connections and two policy-service ones in a row, each answered (round robin: both workers' turns):
 * what the workers then tell the supervisor of them (slots given back: a policy service's key too) is read as before.
 */
async function bothAnswer(c: ClusterProcess): Promise<void> {
  for (let i = 0; i < 2; i++) {
    const client = await SmtpTestClient.connect(c.port('in'));
    try {
      assert.match((await client.read(30_000)).text, /^220 /);
    } finally {
      client.destroy();
    }
    const policy = await PolicyClient.connect({ port: c.port('pol') });
    try {
      assert.match(await policy.ask(rcptRequest()), /^action=/);
    } finally {
      policy.socket.destroy();
    }
  }
}

test('a worker sending messages its supervisor cannot read is replaced; the supervisor and the other processes go on', { timeout: 180_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-garbled-'));
  const c = await startCluster({
    config: `${TWO_WORKERS}${ROUND_ROBIN}policyServices:\n  - { name: pol, listen: "127.0.0.1:{PORT:pol}" }\n`,
    nodeArgs: ['--import', join(ROOT, 'test/helpers/garbled-ipc.ts')],
    env: { POSTERN_GARBLED_WORKER: '1', POSTERN_GARBLED_DIR: dir },
  });
  try {
    const worker0 = await workerPid(c, 0);
    for (const [n, [messages, said]] of BATCHES.entries()) {
      const sender = await workerPid(c, 1);
      await writeFile(join(dir, `batch-${n}`), JSON.stringify(messages));
      await rename(join(dir, `batch-${n}`), join(dir, `send-${n}.json`)); // whole: the worker reads it at once
      await c.waitFor(`batch ${n} sent`, async () => (await readdir(dir)).includes(`sent-${n}.json`));
      const line = await c.waitFor(`worker 1 replaced for batch ${n}`, () => c.logs.find((l) => l.childPid === sender && /sent a message the supervisor cannot read/.test(String(l.msg))));
      assert.match(String(line.msg), said);
      assert.equal(line.level, 50);
      await c.waitFor(`a new worker 1 after batch ${n}`, async () => (await workerPid(c, 1)) !== sender);
      assert.equal(c.proc.exitCode, null, 'the supervisor runs');
      await bothAnswer(c);
    }
    assert.equal(await workerPid(c, 0), worker0, 'worker 0 was never touched');
    const unread = c.logs.filter((l) => /sent a message the supervisor cannot read/.test(String(l.msg)));
    assert.deepEqual(unread.map((l) => l.worker), BATCHES.map(() => 1), 'only the garbled messages were refused');
    // What the supervisor keeps of its children still reads (each child's reload state, at every status).
    const status = await runCli(['status', '--config', join(c.dir, 'postern.yaml')]);
    assert.equal(status.code, 0, status.stderr);
    assert.equal(c.proc.exitCode, null, 'the supervisor runs');
  } finally {
    await c.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

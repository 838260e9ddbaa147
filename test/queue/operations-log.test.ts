// `postern queue delete` and `retry` run as their own process (as another user, often): the server's log still
// has each operation, with what and who, as Postfix's has postsuper's `ID: removed`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { userInfo } from 'node:os';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, testListener } from '../helpers/config.ts';

let s: TestServer;
before(async () => {
  // Delivery off: the messages stay in the spool; the runner still scans (every 200 ms) and logs the operations.
  s = await startTestServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in')], delivery: { enabled: false, scanIntervalMs: 200 } }),
  });
});
after(() => s?.stop());

test('delete and retry from the command line are logged by the running server with the ids, the operation and who ran it', async () => {
  const first = await submitMessage(s.port('in'), 'a@example.net', ['b@example.test']);
  const second = await submitMessage(s.port('in'), 'a@example.net', ['c@example.test']);
  const config = join(s.dir, 'postern.yaml');

  const deleted = await runCli(['queue', 'delete', first, '-c', config]);
  assert.equal(deleted.code, 0, deleted.stderr);
  const retried = await runCli(['queue', 'retry', '--all', '-c', config]);
  assert.equal(retried.code, 0, retried.stderr);
  assert.match(retried.stdout, new RegExp(`1 message due now: ${second}`));
  const missing = await runCli(['queue', 'delete', first, '-c', config]);
  assert.equal(missing.code, 1, 'gone already: nothing done, nothing recorded');

  const logged = (): Array<Record<string, unknown>> => s.logs.filter((l) => l.op === 'delete' || l.op === 'retry');
  await until('both operations logged', () => logged().length === 2, { timeoutMs: 30_000 });
  const user = userInfo().username;
  const [del, ret] = logged();
  assert.equal(del!.id, first);
  assert.equal(del!.level, 30);
  assert.match(String(del!.msg), new RegExp(`^${first}: removed by postern queue delete \\(${user}, uid ${userInfo().uid}, pid \\d+ on \\S+\\) at \\S+$`));
  assert.equal((del!.by as { user: string }).user, user);
  assert.equal(ret!.id, second);
  assert.match(String(ret!.msg), new RegExp(`^${second}: made due now by postern queue retry \\(${user}, `));
  // Each record is removed once logged: none is logged twice.
  assert.deepEqual((await readdir(join(s.dir, 'data', 'spool', 'operations'))).filter((n) => !n.startsWith('.')), []);
  assert.ok(existsSync(join(s.dir, 'data', 'spool', 'operations')));
});

// The record was written and renamed into place but never synced: a power cut could lose it, or leave it empty,
// and with it the only account of who deleted the mail. It is synced now (file and folder), and when that fails
// the command says the operation is done but its record may be lost, and exits 1.
test('a queue operation\'s record is synced to disk before the command returns; a failed sync is said', async () => {
  const id = await submitMessage(s.port('in'), 'a@example.net', ['d@example.test']);
  const faults = diskFaults();
  faults.armFor('fsync-eio', '/spool/operations');
  const deleted = await runCli(['queue', 'delete', id, '-c', join(s.dir, 'postern.yaml')], { env: faults.env });
  assert.ok(faults.taken('fsync-eio'), 'the record\'s folder was synced');
  assert.equal(deleted.code, 1, deleted.stderr);
  assert.match(deleted.stdout, new RegExp(`^${id}: deleted$`, 'm'), 'the deletion itself is reported');
  assert.match(deleted.stderr, /queue delete is done, but its record for the server's log \(who did it\) may be lost: .*EIO/);
  assert.ok(!(await s.runtime.spool.list()).includes(id), 'deleted');
});

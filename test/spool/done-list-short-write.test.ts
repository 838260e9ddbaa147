// A journal message's "done" line cut short by a full disk (write() writes part of the line and says so, no
// error): the message must not be reported removed, and the next line must not be glued to the fragment, which
// left neither id readable as done and brought back a message `postern queue delete` had said was deleted.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { diskFaults, type DiskFaults } from '../helpers/disk-faults.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { runCli } from '../helpers/cli.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { spoolMessage } from './helpers/spool-message.ts';

const scratch = useScratchDir('postern-done-short-');
let faults: DiskFaults;

before(() => { faults = diskFaults(); });

test('postern queue delete whose done line is cut short: not reported deleted, and a later delete is not undone by it', async () => {
  const dataDir = join(scratch.path, 'data');
  const spool = new Spool(join(dataDir, 'spool'));
  await spool.init();
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await spoolMessage(spool, [Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`)]));
  spool.close();
  await mkdir(join(scratch.path, 'etc'));
  const config = join(scratch.path, 'etc', 'postern.yaml');
  await writeFile(config, `dataDir: ${dataDir}\nlisteners:\n  - name: in\n    listen: 127.0.0.1:0\n`);
  const queued = async (): Promise<string[]> =>
    (JSON.parse((await runCli(['queue', 'list', '--json', '-c', config])).stdout) as { messages: Array<{ id: string }> }).messages.map((m) => m.id);

  faults.armFor('write-short', '.done');
  const cut = await runCli(['queue', 'delete', ids[0]!, '-c', config], { env: faults.env });
  assert.ok(faults.taken('write-short'), 'the done line was cut short');
  const said = new Set(cut.stdout.match(/^\S+(?=: deleted$)/gm) ?? []);
  const next = await runCli(['queue', 'delete', ids[1]!, '-c', config]);
  assert.equal(next.code, 0, next.stderr);
  said.add(ids[1]!);

  const left = await queued();
  for (const id of said) assert.ok(!left.includes(id), `${id} was reported deleted: it stays deleted (queue: ${left.join(' ')})`);
  if (!said.has(ids[0]!)) assert.match(cut.stderr, /no space|ENOSPC|cut short/i, 'a delete that did not happen says so');
  assert.ok(left.includes(ids[2]!), 'the message nobody deleted is still queued');
  // Once the disk has room, the first delete can be made again.
  if (left.includes(ids[0]!)) assert.equal((await runCli(['queue', 'delete', ids[0]!, '-c', config])).code, 0);
  assert.deepEqual(await queued(), [ids[2]]);
});

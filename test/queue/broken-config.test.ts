/**
 * `postern queue` with a postern.yaml the server refuses (an unknown key, a typo): that is when an administrator may
 * most need to look at the queue, and every command refused to run. Now the commands that only read the queue
 * (list, summary, show) read the data directory the file names (or the default, when it names none), the file's
 * errors said as warnings; those that change it (retry, delete, hold, release) do so only where the data
 * directory is certain (named in the file, that key without error, a spool there), else refuse naming the errors.
 * The first listing and the first change are command lines; the further variants call the commands' functions in
 * this process (a process each, ~0.3 s of CPU mostly module loading, proved nothing more).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { runCli } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { queueActionCommand, queueListCommand, queueShowCommand, queueSummaryCommand } from '../../engine/cli/queue.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';

const BROKEN_LISTENER = 'listeners:\n  - name: in\n    listen: 127.0.0.1:0\n    bogus: 1\n';

test('a configuration with errors: list, summary and show read the queue of its dataDir with the errors as warnings; changes need a certain dataDir', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-queue-broken-'));
  try {
    const data = join(dir, 'elsewhere');
    const spool = new Spool(join(data, 'spool'));
    await spool.init();
    const [id] = await spoolMessages(spool, ['r@later.test'], { deferredUntil: new Date(Date.now() + 3600_000) });
    spool.close();
    const named = join(dir, 'named.yaml');
    await writeFile(named, `dataDir: ${JSON.stringify(data)}\n${BROKEN_LISTENER}`);

    const list = await runCli(['queue', '-c', named]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`^${id} `, 'm'));
    assert.match(list.stdout, /^-- 1 message$/m);
    assert.match(list.stderr, /^postern: warning: the configuration has errors \(the server refuses it\); reading the queue of .*elsewhere, the dataDir it names:$/m);
    assert.match(list.stderr, /named\.yaml:5:5: listeners\[0\]\.bogus: Unrecognized key: "bogus"/);
    const summary = await runInProcess(() => queueSummaryCommand({ json: true, config: named }));
    assert.equal(summary.code, 0, summary.stderr);
    const show = await runInProcess(() => queueShowCommand(id!, { envelope: true, config: named }));
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /r@later\.test/);

    // Named, without error, a spool there: certain. A change goes ahead, with the same warning.
    const hold = await runCli(['queue', 'hold', id!, '-c', named]);
    assert.equal(hold.code, 0, hold.stderr);
    assert.match(hold.stdout, /^1 message placed on hold: /);
    assert.match(hold.stderr, /changing the queue of .*elsewhere, the dataDir it names/);
    assert.equal(existsSync(join(data, 'spool', 'queue', `${id}.held`)), true);

    // No dataDir in the file: reading takes the default (the file's folder's data/, no spool: said), a change is refused.
    const unnamed = join(dir, 'unnamed.yaml');
    await writeFile(unnamed, BROKEN_LISTENER);
    const read = await runInProcess(() => queueListCommand({ config: unnamed }));
    assert.equal(read.code, 0, read.stderr);
    assert.match(read.stderr, /it names no dataDir: the default/);
    assert.match(read.stderr, /no spool at .*\/data\/spool: no server has run with this dataDir/);
    const release = await runInProcess(() => queueActionCommand('release', [id!], { config: unnamed }));
    assert.equal(release.code, 1);
    assert.match(release.stderr, /unnamed\.yaml:4:5: listeners\[0\]\.bogus: Unrecognized key/);
    assert.match(release.stderr, /postern queue changes nothing: its dataDir is not certain \(the file names none: the default would be taken\)/);
    // Named, but no spool there (a typo in the path): refused too.
    const typo = join(dir, 'typo.yaml');
    await writeFile(typo, `dataDir: ${JSON.stringify(`${data}x`)}\n${BROKEN_LISTENER}`);
    const del = await runInProcess(() => queueActionCommand('delete', [id!], { config: typo }));
    assert.equal(del.code, 1);
    assert.match(del.stderr, /its dataDir is not certain \(no spool at .*elsewherex\/spool\)/);
    assert.equal(existsSync(join(data, 'spool', 'queue', `${id}.held`)), true, 'still held: nothing changed');

    // dataDir itself in error, or no YAML at all: nothing can be read.
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'dataDir: [1]\n');
    const none = await runInProcess(() => queueListCommand({ config: bad }));
    assert.equal(none.code, 1);
    assert.match(none.stderr, /bad\.yaml:1:10: dataDir: Invalid input: expected string, received array/);
    assert.match(none.stderr, /postern queue cannot read the queue: its dataDir cannot be read from it/);
    await writeFile(bad, `dataDir: ${JSON.stringify(data)}\nlisteners: [\n`);
    const notYaml = await runInProcess(() => queueListCommand({ config: bad }));
    assert.equal(notYaml.code, 1);
    assert.equal(notYaml.stdout, '');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * `postern queue retry --all` made each message due with a synced file and a sync of the queue folder, one message
 * after the other: two syncs per message, ~2 minutes at 50,000 messages. Now each batch's due requests
 * (`<id>.due`, Spool.requestAttempts) are written (each fsynced before its rename) side by side and the folder
 * synced once per batch. Counted with strace (-y names each descriptor's file), not timed: the folder syncs far
 * below one per message, every request fsynced before it was renamed into place, and the folder synced after the
 * last rename (nothing the command reports done rests on a rename not yet durable).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Spool } from '../../engine/spool/spool.ts';
import { needs } from '../helpers/example.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
/** 600: two of retry's batches (RETRY_BATCH is 512: a full one and a part); a sync per message would be 600. */
const MESSAGES = 600;

test('queue retry --all on 600 messages: a few folder syncs, not one per message; each due request synced before its rename', { ...needs('strace'), timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-retry-syncs-'));
  try {
    const queueDir = join(dir, 'data', 'spool', 'queue');
    const spool = new Spool(join(dir, 'data', 'spool'));
    await spool.init();
    const later = new Date(Date.now() + 3600_000);
    const ids = await spoolMessages(spool, Array.from({ length: MESSAGES }, (_, i) => `r${i}@later.test`), { deferredUntil: later });
    spool.close();
    const config = join(dir, 'postern.yaml');
    writeFileSync(config, `dataDir: ${JSON.stringify(join(dir, 'data'))}\nlisteners:\n  - { name: in, listen: "127.0.0.1:0" }\n`);

    const trace = join(dir, 'trace');
    const before = Date.now();
    const out = execFileSync('strace', ['-f', '-y', '-o', trace, '-e', 'trace=fsync,fdatasync,rename', process.execPath, MAIN, 'queue', 'retry', '--all', '-c', config],
      { encoding: 'utf8', timeout: 170_000, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NODE_NO_WARNINGS: '1' } });
    assert.match(out, new RegExp(`^${MESSAGES} messages due now: `));

    const lines = readFileSync(trace, 'utf8').split('\n');
    const folderSyncs = lines.flatMap((l, i) => (l.includes(`fsync(`) && l.includes(`<${queueDir}>`) ? [i] : []));
    assert.ok(folderSyncs.length >= 1 && folderSyncs.length <= 10, `${folderSyncs.length} syncs of the queue folder for ${MESSAGES} messages`);
    // Each due request: fsynced (through its temporary file's descriptor) before the rename that puts it in place.
    const synced = new Map<string, number>();
    const renamed = new Map<string, number>();
    lines.forEach((l, i) => {
      const s = /fdatasync\(\d+<([^>]+\.due\.\d+\.[0-9a-f]+\.tmp)>/.exec(l);
      if (s && !synced.has(s[1]!)) synced.set(s[1]!, i);
      const r = /rename\("([^"]+\.due\.\d+\.[0-9a-f]+\.tmp)", "[^"]+\.due"/.exec(l); // (its result may follow on a later line)
      if (r) renamed.set(r[1]!, i);
    });
    assert.equal(renamed.size, MESSAGES, 'a due request renamed into place per message');
    for (const [tmp, at] of renamed) assert.ok((synced.get(tmp) ?? Infinity) < at, `${tmp} fsynced before its rename`);
    assert.ok(folderSyncs.at(-1)! > Math.max(...renamed.values()), 'the folder synced after the last rename');

    // Every message due now, none left behind half written.
    for (const id of ids) {
      const requested = Date.parse(readFileSync(join(queueDir, `${id}.due`), 'utf8').trim());
      assert.ok(requested >= before - 1000 && requested < later.getTime(), `${id} due now`);
      const state = JSON.parse(readFileSync(join(queueDir, `${id}.state`), 'utf8')) as { attempts: number };
      assert.equal(state.attempts, 1, 'its state as the runner left it');
    }
    assert.deepEqual(readdirSync(queueDir).filter((n) => n.endsWith('.tmp')), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

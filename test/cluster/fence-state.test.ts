// The fence state read at start and on each worker's death (<dataDir>/fences/fenced.json, crash-*.json) as a
// faulty disk or a careless hand leaves it: torn, garbage, valid JSON of the wrong shape. The supervisor must
// start and serve (no crash loop), never drop the fence list in silence, and set damaged files aside.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { FenceBook, readFenceList } from '../../engine/cluster/fence-book.ts';
import { writeCrashRecord } from '../../engine/cluster/crash-record.ts';
import { CRASHES_TO_FENCE } from '../../engine/cluster/process-model.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { startCluster, workerPid, ONE_WORKER } from '../helpers/cluster.ts';

const scratch = useScratchDir('postern-fence-state-');
const SHA = 'a'.repeat(64);
const FENCE = { hook: 'rcptto', file: '/etc/postern/scripts/rcptto.js', sha256: SHA, since: '2026-01-01T00:00:00.000Z', crashes: 3 };

let n = 0;
async function fencesDir(files: Record<string, string>): Promise<string> {
  const dir = join(scratch.path, `fences-${n++}`);
  await mkdir(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return dir;
}

const DAMAGED_LISTS: Record<string, string> = {
  'torn': JSON.stringify([FENCE]).slice(0, 40),
  'empty (a power loss after the rename)': '',
  'not a list': '{}',
  'null': 'null',
  'a list of something else': '[1, "x", null]',
  'an entry without its digest': JSON.stringify([{ hook: 'rcptto', file: '/x.js' }]),
};

for (const [what, text] of Object.entries(DAMAGED_LISTS)) {
  test(`a fence list that is ${what}: reported with its path, set aside, and no worker is handed it`, async () => {
    const dir = await fencesDir({ 'fenced.json': text });
    const reports: string[] = [];
    const book = new FenceBook(dir, undefined, (m) => reports.push(m));
    assert.deepEqual(book.fences, []);
    assert.equal(reports.length, 1);
    assert.match(reports[0]!, new RegExp(`^the fence list ${join(dir, 'fenced.json')} is damaged \\(.+\\); kept as ${join(dir, 'damaged-fenced.json')}: the scripts it fenced run again`));
    assert.deepEqual(await readdir(dir), ['damaged-fenced.json']);
    assert.equal(await readFile(join(dir, 'damaged-fenced.json'), 'utf8'), text);
    // A worker started with it still there (no supervisor yet) reads no fences rather than throwing.
    await writeFile(join(dir, 'fenced.json'), text);
    assert.deepEqual(readFenceList(dir), []);
  });
}

test('a sound fence list is read as written, by the supervisor and by a worker', async () => {
  const dir = await fencesDir({ 'fenced.json': JSON.stringify([FENCE]) });
  const reports: string[] = [];
  const book = new FenceBook(dir, undefined, (m) => reports.push(m));
  assert.deepEqual(book.fences, [FENCE]);
  assert.deepEqual(reports, []);
  assert.deepEqual(readFenceList(dir), [FENCE]);
});

test('a damaged crash record is reported once and set aside; the sound records beside it still count', async () => {
  const script = { hook: 'rcptto' as const, file: '/s/rcptto.js', sha256: SHA };
  const dir = await fencesDir({
    'crash-10-1.json': '{"at":"2026-01-01T00:00:00.000Z","pid":10,"worker":0,"reason":"hang","scr',
    'crash-11-1.json': '{}',
  });
  for (let i = 0; i < CRASHES_TO_FENCE; i++) {
    await writeFile(join(dir, `running-${20 + i}.bin`), '');
    writeCrashRecord(dir, join(dir, `running-${20 + i}`), { at: new Date().toISOString(), pid: 20 + i, worker: 0, reason: 'hang', scripts: [script] });
  }
  const reports: string[] = [];
  const book = new FenceBook(dir, undefined, (m) => reports.push(m));
  const { fenced, crashes } = book.collect();
  assert.equal(crashes.length, CRASHES_TO_FENCE, 'the sound records are counted');
  assert.deepEqual(fenced.map((f) => f.file), ['/s/rcptto.js']);
  assert.equal(reports.length, 2);
  for (const name of ['crash-10-1.json', 'crash-11-1.json']) {
    assert.ok(reports.some((r) => r.startsWith(`crash record ${join(dir, name)} is damaged (`) && r.endsWith(`; kept as ${join(dir, `damaged-${name}`)}: that crash is not counted towards a fence`)), name);
  }
  assert.deepEqual((await readdir(dir)).filter((f) => /crash/.test(f)).sort(), ['damaged-crash-10-1.json', 'damaged-crash-11-1.json']);
  // Nothing is left to report the next time.
  book.collect();
  assert.equal(reports.length, 2);
});

test('postern serve with a fence list of the wrong shape starts, serves, replaces a worker, and says so at error level', async () => {
  const dataDir = join(scratch.path, 'data-wrong-shape');
  await mkdir(join(dataDir, 'fences'), { recursive: true });
  await writeFile(join(dataDir, 'fences', 'fenced.json'), '{}');
  // Before: the list went to each worker as it was, and `{}` threw there; the first start failed, the server exited.
  const c = await startCluster({ config: ONE_WORKER, dataDir });
  try {
    const pid = await workerPid(c, 0);
    assert.ok(c.logs.some((l) => l.level === 50 && String(l.msg).startsWith(`the fence list ${join(dataDir, 'fences', 'fenced.json')} is damaged`)), 'logged at error level');
    process.kill(pid, 'SIGKILL');
    await c.waitFor('the worker replaced', async () => {
      const p = (await c.cluster()).processes.find((x) => x.role === 'worker');
      return p?.ready && p.pid !== pid;
    });
    assert.deepEqual((await c.cluster()).fences, []);
  } finally {
    await c.stop();
  }
});

test('postern serve with a FIFO as the fence list and as a crash record: it starts, says so, and sets the record aside', async () => {
  const dataDir = join(scratch.path, 'data-fifo');
  const fences = join(dataDir, 'fences');
  await mkdir(fences, { recursive: true });
  execFileSync('mkfifo', [join(fences, 'fenced.json'), join(fences, 'crash-1-1.json')]);
  // Before: the supervisor's blocking read of fenced.json waited for a writer for ever; it never started.
  const c = await startCluster({ config: ONE_WORKER, dataDir });
  try {
    const pid = await workerPid(c, 0);
    assert.ok(c.logs.some((l) => l.level === 50 && l.msg === `the fence list ${join(fences, 'fenced.json')} cannot be read (not a regular file): the scripts it fenced run again until they crash their worker ${CRASHES_TO_FENCE} times more`));
    process.kill(pid, 'SIGKILL'); // its death has the crash records read
    await c.waitFor('the record set aside', () => c.logs.some((l) => l.level === 50 && String(l.msg).startsWith(`crash record ${join(fences, 'crash-1-1.json')} is damaged (not a regular file); kept as`)));
    await c.waitFor('the worker replaced', async () => {
      const p = (await c.cluster()).processes.find((x) => x.role === 'worker');
      return p?.ready && p.pid !== pid;
    });
  } finally {
    await c.stop();
  }
});

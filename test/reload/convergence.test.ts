// Hot reload converges to what is on disk whatever the timing of the saves, and status tells the truth.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, rename, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { MX_WITH_TABLE_CONFIG, mailFromReply, verdictScript } from './helpers.ts';

const CONFIG = MX_WITH_TABLE_CONFIG;

/** A script rejecting MAIL FROM with `text`; `slow` adds a top level that computes for a while (within limits). */
interface StatusFile { generation: number; reloads: number; failedReloads: number; lastError: string[] | null }
const statusFile = async (s: TestServer): Promise<StatusFile> => JSON.parse(await readFile(join(s.dir, 'data', 'status.json'), 'utf8')) as StatusFile;

/** After the reloader went idle: the verdict is the file's, and status names the generation in force, without error. */
async function assertConverged(s: TestServer, text: string, what: string): Promise<void> {
  await s.reloader.whenIdle();
  assert.equal(await mailFromReply(s), `550 5.7.1 ${text}`, `${what}: the verdict is the last file written`);
  const status = await statusFile(s);
  assert.equal(status.generation, s.runtime.generation.serial, `${what}: status names the generation in force`);
  assert.equal(status.lastError, null, `${what}: no error reported`);
}

/** Deterministic pseudo-random numbers (a failing run can be repeated with POSTERN_SEED). */
function random(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 2 ** 32;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait for a condition that an event will make true (file-system events have no promise of their own). */
async function eventually(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const t0 = performance.now();
  while (!check()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`not seen: ${what}`);
    await sleep(5);
  }
}

test('saves at random moments, also during slow builds: the verdict always ends as the last file written', { timeout: 240_000 }, async () => {
  const seed = Number(process.env.POSTERN_SEED ?? Date.now() % 1_000_000);
  const rand = random(seed);
  const randInBuild = random(seed + 1);
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') } });
  const file = join(s.dir, 'scripts', 'mailfrom.ts');
  // Builds reach this hook after reading every input; a queued save runs there, i.e. while the build is in progress.
  const duringBuild: Array<() => Promise<void>> = [];
  s.reloader.tuning.afterBuild = async () => {
    const save = duringBuild.shift();
    if (save) await save();
    else if (randInBuild() < 0.3) await sleep(Math.floor(randInBuild() * 120)); // a slow build
  };
  let version = 0;
  const save = async (): Promise<string> => {
    const text = `v${++version} seed ${seed}`;
    const content = verdictScript(text, rand() < 0.25);
    if (rand() < 0.5) await writeFile(file, content);
    else {
      await writeFile(`${file}.tmp~`, content);
      await rename(`${file}.tmp~`, file);
    }
    return text;
  };
  try {
    for (let iteration = 1; iteration <= 25; iteration++) {
      let last = '';
      const saves = 1 + Math.floor(rand() * 4);
      for (let n = 0; n < saves; n++) {
        const moment = rand();
        if (moment < 0.35) {
          // during a build (after it read the inputs): the save the old reloader lost
          let saved!: Promise<string>;
          const done = new Promise<void>((resolve) => duringBuild.push(async () => { saved = save(); await saved; resolve(); }));
          await save(); // something new to build
          await done;
          last = await saved;
        } else {
          last = await save();
          if (moment < 0.7) await sleep(Math.floor(rand() * 80)); // somewhere around the settle time
        }
      }
      duringBuild.length = 0;
      await assertConverged(s, last, `seed ${seed}, iteration ${iteration}`);
    }
    assert.equal(s.reloader.status.data.failedReloads, 0);
  } finally { s.reloader.tuning.afterBuild = undefined; await s.stop(); }
});

test('bursts of saves at random moments against slow scripts (no hooks): every burst ends in force', { timeout: 240_000 }, async () => {
  const seed = Number(process.env.POSTERN_SEED ?? Date.now() % 1_000_000);
  const rand = random(seed);
  // Each version's top level computes for a while, so saves keep landing in the middle of builds.
  const slowScript = (text: string): string => `let spin = 0;\nfor (let i = 0; i < 10_000_000; i++) spin += i % 7;\n${verdictScript(text)}`;
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': slowScript('v0') } });
  const file = join(s.dir, 'scripts', 'mailfrom.ts');
  let version = 0;
  try {
    for (let burst = 1; burst <= 10; burst++) {
      let last = '';
      for (let n = 0; n < 5; n++) {
        last = `v${++version} seed ${seed}`;
        await writeFile(file, slowScript(last));
        await sleep(Math.floor(rand() * 150));
      }
      await assertConverged(s, last, `seed ${seed}, burst ${burst}`);
    }
  } finally { await s.stop(); }
});

test('a burst of saves while a build runs gives one reload, of the settled content', { timeout: 60_000 }, async () => {
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') } });
  const file = join(s.dir, 'scripts', 'mailfrom.ts');
  const swapped: number[] = [];
  const stop = s.reloader.onReload((o) => { if (o.changed) swapped.push(s.runtime.generation.serial); });
  let builds = 0;
  s.reloader.tuning.afterBuild = async () => {
    // The first build has read "burst 1"; the rest of the burst is saved, 20 ms apart, before it may finish.
    if (++builds === 1) for (let i = 2; i <= 5; i++) { await sleep(20); await writeFile(file, verdictScript(`burst ${i}`)); }
  };
  try {
    const before = { ...s.reloader.status.data };
    await writeFile(file, verdictScript('burst 1'));
    await assertConverged(s, 'burst 5', 'burst');
    assert.equal(s.reloader.status.data.reloads - before.reloads, 1, 'one reload');
    assert.equal(swapped.length, 1, 'no intermediate version was swapped in');
    assert.ok(s.reloader.status.data.supersededBuilds > before.supersededBuilds, 'the build that read an intermediate save was thrown away');
  } finally { stop(); s.reloader.tuning.afterBuild = undefined; await s.stop(); }
});

test('every save reaches the reloader, also one right after another (no 50 ms suppression)', { timeout: 60_000 }, async () => {
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') }, settleMs: 2000 });
  const file = join(s.dir, 'scripts', 'mailfrom.ts');
  try {
    for (let i = 1; i <= 10; i++) {
      const seen = s.reloader.watchEvents.inputs;
      await writeFile(file, verdictScript(`save ${'!'.repeat(i)}`)); // each one longer: a different file status
      await eventually(() => s.reloader.watchEvents.inputs > seen, `an event for save ${i}`);
    }
    await assertConverged(s, `save ${'!'.repeat(10)}`, 'quick saves');
  } finally { await s.stop(); }
});

test('other files in the configuration folder do not trigger reload checks; inputs there do', { timeout: 60_000 }, async () => {
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') } });
  try {
    const checks = s.reloader.status.data.checks;
    const others = s.reloader.watchEvents.others;
    for (let i = 0; i < 5; i++) await writeFile(join(s.dir, 'postern.log'), `line ${i}\n`, { flag: 'a' });
    await writeFile(join(s.dir, 'scripts', 'notes.txt'), 'not a script');
    await eventually(() => s.reloader.watchEvents.others > others, 'the unrelated writes');
    await s.reloader.whenIdle();
    assert.equal(s.reloader.status.data.checks, checks, 'no reload check for a log file or a note');
    // A table in the same folder is an input.
    await writeFile(join(s.dir, 'senders'), 'spam@x.example REJECT\n');
    await eventually(() => s.reloader.status.data.checks > checks, 'a check after the table changed');
    await s.reloader.whenIdle();
    assert.equal(s.runtime.generation.tables.get('senders')?.get('spam@x.example'), 'REJECT');
  } finally { await s.stop(); }
});

test('a build that never settles is reported as failed, with the file; the next change reloads', { timeout: 60_000 }, async () => {
  const s = await startTestServer({ config: CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') } });
  const file = join(s.dir, 'scripts', 'mailfrom.ts');
  let release!: () => void;
  const stuck = new Promise<void>((resolve) => { release = resolve; });
  s.reloader.tuning.buildTimeoutMs = 2000;
  s.reloader.tuning.afterBuild = async () => {
    if ((await readFile(file, 'utf8')).includes('stuck')) await stuck;
  };
  try {
    const generation = s.runtime.generation.serial;
    await writeFile(file, verdictScript('stuck'));
    await s.reloader.whenIdle();
    assert.equal(s.runtime.generation.serial, generation, 'the running generation stays');
    assert.equal(await mailFromReply(s), '550 5.7.1 v0');
    const status = await statusFile(s);
    assert.equal(status.failedReloads, 1);
    const error = /postern\.yaml: reload did not finish within 2000 ms while loading the afterBuild hook/;
    assert.ok(status.lastError?.some((e) => error.test(e)), `status: ${status.lastError?.join(' | ')}`);
    assert.ok(s.logs.some((l) => l.level === 50 && error.test(String(l.msg))), 'logged');
    // The stuck build is still pending; a fix must not wait for it.
    await writeFile(file, verdictScript('fixed'));
    await assertConverged(s, 'fixed', 'after the fix');
  } finally {
    release(); // let the abandoned build finish so its isolates are released before the process exits
    s.reloader.tuning.afterBuild = undefined;
    await s.stop();
  }
});

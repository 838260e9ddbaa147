/**
 * `node test/bench/stray-writes.ts [<tree>…]`: what a file written again and again beside postern.yaml (a log
 * redirected there, say) costs `postern serve`'s supervisor, the process that watches the inputs. For each tree (default:
 * this one), a server with two workers on a fresh configuration folder: its supervisor's CPU over STRAY_SECONDS (10)
 * idle, then over as long with a file beside postern.yaml appended to every 10 ms, rounds alternated between trees
 * (STRAY_ROUNDS, 2). Reported per tree: CPU milliseconds per second idle and while written beside.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../helpers/free-port.ts';

const trees = (process.argv.slice(2).length ? process.argv.slice(2) : ['.']).map((t) => resolve(t));
const seconds = Number(process.env.STRAY_SECONDS ?? 10);
const rounds = Number(process.env.STRAY_ROUNDS ?? 2);

/** CPU seconds (user + system) process `pid` has used so far. */
const cpuOf = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const [utime, stime] = stat.slice(stat.lastIndexOf(')') + 2).split(' ').slice(11, 13).map(Number);
  return (utime! + stime!) / 100;
};

async function once(tree: string): Promise<{ idle: number; written: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-stray-'));
  mkdirSync(join(dir, 'scripts'));
  writeFileSync(join(dir, 'postern.yaml'), `dataDir: ${join(dir, 'data')}\nscripts: ${join(dir, 'scripts')}\nworkers: 2\n` +
    `listeners:\n  - name: in\n    listen: 127.0.0.1:${await freePort()}\n    reverseDns: false\n`);
  const proc = spawn(join(tree, 'node_modules/.bin/node'), [join(tree, 'engine/cli/main.ts'), 'serve', '--config', join(dir, 'postern.yaml')], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d; });
  try {
    while (!out.includes('supervisor started')) await sleep(50);
    await sleep(2000); // past start-up's own work
    const pid = proc.pid!;
    let at = cpuOf(pid);
    await sleep(seconds * 1000);
    const idle = cpuOf(pid) - at;
    at = cpuOf(pid);
    const log = join(dir, 'postern.log');
    const until = performance.now() + seconds * 1000;
    while (performance.now() < until) { appendFileSync(log, 'a line of a log\n'); await sleep(10); }
    const written = cpuOf(pid) - at;
    return { idle: (idle * 1000) / seconds, written: (written * 1000) / seconds };
  } finally {
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
}

for (const tree of trees) if (!existsSync(join(tree, 'engine/cli/main.ts'))) throw new Error(`${tree}: not a Postern tree`);
const results = new Map(trees.map((t) => [t, [] as Array<{ idle: number; written: number }>]));
for (let round = 0; round < rounds; round++) for (const tree of trees) results.get(tree)!.push(await once(tree));
for (const [tree, rs] of results) {
  console.log(`${tree}: supervisor CPU, ms per second: idle ${rs.map((r) => r.idle.toFixed(0)).join(' / ')}; a file beside postern.yaml appended to every 10 ms ${rs.map((r) => r.written.toFixed(0)).join(' / ')}`);
}

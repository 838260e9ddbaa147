/** What the benchmarks read from /proc and how they drive a server: CPU counters, server start, one load run. */
import { fork, type ChildProcess } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestPki } from '../helpers/pki.ts';

const here = import.meta.dirname;

/** CPU seconds (user + system) a process (or one of its threads) has used so far: robust to other load on the machine. */
export async function cpuSeconds(pid: number, thread?: number): Promise<number> {
  const path = thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`;
  const fields = (await readFile(path, 'utf8')).split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** CPU nanoseconds of every thread of a process so far, from each /proc/<pid>/task/<tid>/schedstat (exact, not in 10 ms ticks). */
export async function threadsNs(pid: number): Promise<number> {
  let total = 0;
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    total += Number((await readFile(`/proc/${pid}/task/${task}/schedstat`, 'utf8').catch(() => '0')).split(' ')[0]);
  }
  return total;
}

/** CPU seconds of a process and every process below it (a supervisor and its workers) that runs now. */
export async function treeCpuSeconds(pid: number): Promise<number> {
  let total = 0;
  try {
    total = await cpuSeconds(pid);
  } catch {
    return 0; // ended meanwhile
  }
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const task of tasks) {
    const children = (await readFile(`/proc/${pid}/task/${task}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean);
    for (const child of children) total += await treeCpuSeconds(Number(child));
  }
  return total;
}

export interface MachineTicks { total: number; idle: number; steal: number }

/** Clock ticks of the whole machine so far: all, idle (with I/O wait), and stolen by the hypervisor. */
export async function machineTicks(): Promise<MachineTicks> {
  const cpu = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: cpu.reduce((a, b) => a + b, 0), idle: (cpu[3] ?? 0) + (cpu[4] ?? 0), steal: cpu[7] ?? 0 };
}

export interface StartedServer { stop: () => void; pid: number; child: ChildProcess }

/** Fork a bench server script (a path, or a file name in test/bench) and wait for its "ready" message. */
export async function startServer(script: string, arg: unknown, quiet = false, execArgv?: string[]): Promise<StartedServer> {
  // quiet: Haraka's dependencies print start-up chatter on stdout.
  const child = fork(script.includes('/') ? script : join(here, script), [JSON.stringify(arg)], { execArgv, stdio: ['ignore', quiet ? 'ignore' : 'inherit', 'inherit', 'ipc'] });
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`${script} exited ${code}`)));
  });
  return { stop: () => child.kill('SIGKILL'), pid: child.pid!, child };
}

export interface LoadResult { rate: number; p50: number; p99: number; messages: number; clientCpuUs: number }

/** One run of the load generator (its own process): 20 clients, STARTTLS with the ECDSA client certificate. */
export async function load(pki: TestPki, port: number, perConnection: number, messages: number, auth: boolean): Promise<LoadResult> {
  const client = pki.clients.ecdsa; // like most modern device certificates, and cheaper for the load generator than RSA
  const child = fork(join(here, 'load-client.ts'), [JSON.stringify({
    port, concurrency: 20, messages, perConnection, cert: client.cert, key: client.key, ca: pki.ca.cert, auth,
  })], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  if (code !== 0) throw new Error(`load client failed (${code})`);
  return JSON.parse(out) as LoadResult;
}

export interface Measured extends LoadResult {
  /** Server CPU per message, all threads and all its processes (postern serve's workers), µs. */
  cpuUs: number;
  /** The server's event-loop thread: CPU per message (µs) and share of the wall time it was busy. */
  mainUs: number;
  mainBusy: number;
  /** The whole machine per message (µs, every process and the kernel), and its idle and stolen shares. */
  machineUs: number;
  idle: number;
  steal: number;
}

/** A load run with the server's and the machine's CPU counters read around it. */
export async function measure(pki: TestPki, server: { pid: number; port: number }, perConnection: number, messages: number, auth: boolean): Promise<Measured> {
  const [cpu0, main0, machine0, wall0] = [await treeCpuSeconds(server.pid), await cpuSeconds(server.pid, server.pid), await machineTicks(), performance.now()];
  const r = await load(pki, server.port, perConnection, messages, auth);
  const wall = (performance.now() - wall0) / 1000;
  const [cpu1, main1, machine1] = [await treeCpuSeconds(server.pid), await cpuSeconds(server.pid, server.pid), await machineTicks()];
  const ticks = Math.max(1, machine1.total - machine0.total);
  const busyTicks = ticks - (machine1.idle - machine0.idle) - (machine1.steal - machine0.steal);
  return {
    ...r,
    cpuUs: (cpu1 - cpu0) / r.messages * 1e6,
    mainUs: (main1 - main0) / r.messages * 1e6,
    mainBusy: (main1 - main0) / wall,
    machineUs: busyTicks / 100 / r.messages * 1e6,
    idle: (machine1.idle - machine0.idle) / ticks,
    steal: (machine1.steal - machine0.steal) / ticks,
  };
}

export const median = (xs: number[]): number => { const v = [...xs].sort((x, y) => x - y); return v[Math.floor(v.length / 2)]!; };

/**
 * Developer aid: what a connection's per-IP slot costs a worker and the supervisor, by round trip ('conn+'
 * and its answer over Node's IPC channel, as `postern serve` does with two workers accepting) against the
 * counting lease (counted in the worker alone: engine/cluster/shared-counters.ts). Two real processes: this
 * one as the worker (WorkerCounters), a forked child as the supervisor (CounterHost). CPU time of each
 * process per slot (taken, then given back with the next message), so the machine's load moves it little.
 * SLOT_COUNT (default 20000) slots, SLOT_CLIENTS (default 20) connections open at once, SLOT_ROUNDS (3).
 */
import { fork } from 'node:child_process';
import { CounterHost, WorkerCounters } from '../../engine/cluster/shared-counters.ts';

if (process.argv[2] === 'host') {
  // The supervisor's side: every message handled as supervisor.ts does; 'cpu' answers its CPU time so far.
  const host = new CounterHost(60_000, { sendTo: (_w, m) => process.send!(m) });
  process.on('message', (m: { t?: string }) => {
    if (m.t === 'cpu') return void process.send!({ t: 'cpu-r', cpu: process.cpuUsage() });
    if (m.t === 'grant') return void host.grant(0);
    host.handle(0, m as Parameters<CounterHost['handle']>[1], (a) => process.send!(a), () => undefined);
  });
} else {
  const count = Number(process.env.SLOT_COUNT ?? 20_000);
  const clients = Number(process.env.SLOT_CLIENTS ?? 20);
  const rounds = Number(process.env.SLOT_ROUNDS ?? 3);
  const child = fork(new URL(import.meta.url).pathname, ['host'], { execArgv: process.execArgv, stdio: 'inherit' });
  let cpuWaiting: ((cpu: NodeJS.CpuUsage) => void) | null = null;
  const counters = new WorkerCounters({ send: (m) => child.send(m) }, 60_000);
  child.on('message', (m: { t?: string; cpu?: NodeJS.CpuUsage }) => {
    if (m.t === 'cpu-r') return cpuWaiting?.(m.cpu!);
    counters.handle(m as Parameters<WorkerCounters['handle']>[0]);
  });
  const hostCpu = (): Promise<NodeJS.CpuUsage> => new Promise((resolve) => { cpuWaiting = resolve; child.send({ t: 'cpu' }); });
  const us = (c: NodeJS.CpuUsage): number => c.user + c.system;

  /** `count` slots over `clients` connections at once, each given back when the next is taken (as 20 clients reconnecting do). */
  async function run(): Promise<{ worker: number; supervisor: number }> {
    const h0 = us(await hostCpu());
    const w0 = us(process.cpuUsage());
    let n = 0;
    await Promise.all(Array.from({ length: clients }, async (_, i) => {
      const key = `in 192.0.2.${i % 250}`;
      while (n < count) {
        n++;
        await counters.take(key, key.slice(3));
        counters.release(key);
        if (n % 20 === 0) counters.flush(); // the heartbeat's, or the next request's, flush
        await new Promise((r) => setImmediate(r)); // a session between its slot and its end
      }
    }));
    counters.flush();
    const w1 = us(process.cpuUsage());
    const h1 = us(await hostCpu());
    return { worker: (w1 - w0) / count, supervisor: (h1 - h0) / count };
  }

  const rows: string[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const mode of round % 2 ? ['lease', 'round trip'] : ['round trip', 'lease']) {
      if (mode === 'lease') {
        child.send({ t: 'grant' });
        await new Promise<void>((resolve) => { const check = (): void => (counters.leased ? resolve() : void setImmediate(check)); check(); });
      } else if (counters.leased) {
        counters.handle({ t: 'lease-end' }); // the lease's slots go back to the supervisor (none are open here)
        await new Promise((r) => setTimeout(r, 50));
      }
      const r = await run();
      rows.push(`${mode.padEnd(10)} round ${round}: worker ${r.worker.toFixed(1)} µs/slot, supervisor ${r.supervisor.toFixed(1)} µs/slot`);
    }
  }
  console.log(rows.join('\n'));
  child.kill();
}

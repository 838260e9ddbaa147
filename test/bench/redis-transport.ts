/**
 * Developer aid: what one round trip to redis-server costs over loopback TCP and over its Unix socket, with the
 * client the store uses (node-redis) and the store's own rate() command: one `EVALSHA` of B calls (default 4, as a
 * turn of bench:store carries ~3–4.4) in flight at a time, N commands per round (10 000), ROUNDS rounds (12)
 * alternating which transport goes first. CPU of this process (the client side: node-redis, libuv and the
 * kernel's part of each write and read) and of every redis-server thread, from /proc/<pid>/task/<tid>/schedstat
 * (nanoseconds), per command; then each round's unix/TCP ratio, median and range.
 *
 *   B=4 ROUNDS=12 node test/bench/redis-transport.ts
 */
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { createClient } from 'redis';
import { startRedis } from '../helpers/redis-server.ts';
import { median, threadsNs } from './measure.ts';

const B = Number(process.env.B ?? 4);
const N = Number(process.env.N ?? 10_000);
const ROUNDS = Number(process.env.ROUNDS ?? 12);
const redis = await startRedis();
process.on('exit', () => { if (redis.pid) process.kill(redis.pid, 'SIGKILL'); });
const RATE = /const RATE = `([\s\S]*?)`;/.exec(readFileSync(join(import.meta.dirname, '../../engine/store/redis-store.ts'), 'utf8'))![1]!;
const sha = createHash('sha1').update(RATE).digest('hex');
const clients = { tcp: createClient({ url: redis.url }), unix: createClient({ socket: { path: redis.socketPath, tls: false } }) };
for (const c of Object.values(clients)) await c.connect();
await clients.tcp.sendCommand(['SCRIPT', 'LOAD', RATE]);
const keys = Array.from({ length: B }, (_, i) => `bench:${i}`);
const command = ['EVALSHA', sha, String(B), ...keys, ...keys.flatMap(() => ['1000000000', '3600000'])];
type Name = keyof typeof clients;
const per: Record<Name, { client: number[]; redis: number[] }> = { tcp: { client: [], redis: [] }, unix: { client: [], redis: [] } };
for (let round = 0; round < ROUNDS; round++) {
  for (const name of (round % 2 ? ['unix', 'tcp'] : ['tcp', 'unix']) as Name[]) {
    const c = clients[name];
    for (let i = 0; i < 500; i++) await c.sendCommand(command);
    const [c0, r0] = [await threadsNs(process.pid), await threadsNs(redis.pid!)];
    for (let i = 0; i < N; i++) await c.sendCommand(command);
    const [c1, r1] = [await threadsNs(process.pid), await threadsNs(redis.pid!)];
    per[name].client.push((c1 - c0) / N / 1000);
    per[name].redis.push((r1 - r0) / N / 1000);
  }
}
const range = (xs: number[]): string => `${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
console.log(`one EVALSHA of ${B} rate() calls in flight, ${N} per round, ${ROUNDS} rounds; µs per command, medians`);
for (const name of ['tcp', 'unix'] as Name[]) console.log(`${name.padEnd(5)} client ${median(per[name].client).toFixed(1)}  redis-server ${median(per[name].redis).toFixed(1)}`);
const ratio = (k: 'client' | 'redis'): number[] => per.unix[k].map((u, i) => u / per.tcp[k][i]!);
console.log(`unix/tcp per round: client ${range(ratio('client'))}  redis-server ${range(ratio('redis'))}`);
for (const c of Object.values(clients)) c.destroy();
await redis.stop();
process.exit(0);

/**
 * Developer aid: what `redis-server` spends (its own CPU, /proc) per rate() call for each way of sending a
 * turn's calls, B calls per request (default 5, as bench:store's turns carry ~4.4), N requests one at a time
 * over one raw socket (no client library: only the server's side is measured), ROUNDS rounds interleaved:
 *   evalsha   the store's RATE script (engine/store/redis-store.ts), one EVALSHA for the B calls
 *   fcall     the same script as a Redis Function (FCALL)
 *   pipeline  INCR + PEXPIRE key ms NX + PTTL per call, pipelined (not atomic per call, counts refused calls)
 *   multi     the same inside MULTI/EXEC
 *   ping      one PING per request: what a request costs Redis before any command's work
 *
 *   B=5 N=20000 node test/bench/redis-commands.ts
 */
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { startRedis } from '../helpers/redis-server.ts';
import { cpuSeconds, median } from './measure.ts';

const B = Number(process.env.B ?? 5);
const N = Number(process.env.N ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 3);

const redis = await startRedis();
const socket = connect(redis.port, '127.0.0.1');
await new Promise((resolve) => socket.once('connect', resolve));
socket.setNoDelay(true);

/** A command in RESP. */
const command = (args: string[]): string => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;

/** The index after one whole reply at `i`, or -1 when it has not all come. */
function replyEnd(b: Buffer, i: number): number {
  const eol = b.indexOf('\r\n', i);
  if (eol < 0) return -1;
  const type = b[i];
  if (type === 0x2b || type === 0x3a) return eol + 2; // + :
  if (type === 0x2d) throw new Error(`redis: ${b.toString('latin1', i, eol)}`); // -
  const n = Number(b.toString('latin1', i + 1, eol));
  if (type === 0x24) return n < 0 ? eol + 2 : b.length >= eol + n + 4 ? eol + n + 4 : -1; // $
  let j = eol + 2; // *
  for (let k = 0; k < n && j >= 0; k++) j = replyEnd(b, j);
  return j;
}

let pending: Buffer = Buffer.alloc(0);
let awaited = 0;
let done: (() => void) | null = null;
socket.on('data', (chunk: Buffer) => {
  pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
  let i = 0;
  for (let j; i < pending.length && (j = replyEnd(pending, i)) >= 0; i = j) awaited--;
  pending = pending.subarray(i);
  if (awaited === 0 && done) { const d = done; done = null; d(); }
});
/** Send a request (several commands) and wait for its `replies` replies. */
const request = (text: string, replies: number): Promise<void> => new Promise((resolve) => {
  awaited = replies;
  done = resolve;
  socket.write(text);
});

const RATE = /const RATE = `([\s\S]*?)`;/.exec(readFileSync(join(import.meta.dirname, '../../engine/store/redis-store.ts'), 'utf8'))![1]!;
await request(command(['SCRIPT', 'LOAD', RATE]), 1);
await request(command(['FUNCTION', 'LOAD', 'REPLACE', `#!lua name=bench\nredis.register_function('rate', function(KEYS, ARGV)${RATE}\nend)`]), 1);
const sha = createHash('sha1').update(RATE).digest('hex');
const keys = Array.from({ length: B }, (_, i) => `bench:${i % 3}`); // a turn's calls, some on the same key
const limitAndWindow = keys.flatMap(() => ['1000000000', '3600000']);
const perCall = (k: string): string => command(['INCR', k]) + command(['PEXPIRE', k, '3600000', 'NX']) + command(['PTTL', k]);
const shapes: Record<string, [text: string, replies: number]> = {
  evalsha: [command(['EVALSHA', sha, String(B), ...keys, ...limitAndWindow]), 1],
  fcall: [command(['FCALL', 'rate', String(B), ...keys, ...limitAndWindow]), 1],
  pipeline: [keys.map(perCall).join(''), 3 * B],
  multi: [command(['MULTI']) + keys.map(perCall).join('') + command(['EXEC']), 3 * B + 2],
  ping: [command(['PING']), 1],
};
const results: Record<string, number[]> = {};
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, [text, replies]] of Object.entries(shapes)) {
    for (let i = 0; i < 500; i++) await request(text, replies);
    const cpu0 = await cpuSeconds(redis.pid!);
    for (let i = 0; i < N; i++) await request(text, replies);
    (results[name] ??= []).push((await cpuSeconds(redis.pid!) - cpu0) / N / B * 1e6);
  }
}
console.log(`redis-server CPU µs per rate() call, ${B} calls per request, ${N} requests, rounds: ${ROUNDS} (median, then each)`);
for (const [name, v] of Object.entries(results)) console.log(name.padEnd(10), median(v).toFixed(2).padStart(6), ' ', v.map((x) => x.toFixed(2)).join(' '));
socket.destroy();
await redis.stop();

/**
 * A Redis that misbehaves while its connection stays up, over real SMTP: a peer on loopback that speaks
 * RESP answers rate() with `-OOM`, `-BUSY`, a byte that is no RESP type, an array of strings where the
 * script returns numbers, or nothing at all. Every one fails the hook closed (451), and once the peer
 * answers properly again (a silent one answering what it held), mail flows without a restart. The array of strings was handed to the script as
 * `{ allowed: false, count: 'x', resetSeconds: NaN }`: a script refusing over its limit refused for good
 * (550) on a reply that said nothing about the limit. Counters and AUTH failure counts read such replies
 * as NaN, which no limit is ever reached by: AUTH was never refused for failures.
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { openTransaction } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { RedisCounterStore } from '../../engine/store/redis-store.ts';
import { StoreUnavailable } from '../../engine/store/index.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { loggedStore } from '../helpers/logged-redis-store.ts';

type Mode = 'ok' | 'oom' | 'busy' | 'not-resp' | 'strings' | 'silent' | 'endless-bulk' | 'endless-array' | 'endless-at-connect';

/** An endless reply is streamed until the connection closes, or this much is sent (the test then fails). */
const STREAM_CAP = 64 * 1024 * 1024;

/** What the peer streamed of its last endless reply, and how that ended. */
interface Stream { bytes: number; ended: 'closed' | 'cap' | null; startRss: number; peakRss: number }

/** Commands of the RESP protocol as clients send them: arrays of bulk strings. */
function* commands(buf: { data: Buffer }): Generator<string[]> {
  for (;;) {
    const d = buf.data;
    if (d.length === 0 || d[0] !== 0x2a) return; // '*'
    let at = d.indexOf('\r\n');
    if (at < 0) return;
    const n = Number(d.subarray(1, at).toString());
    at += 2;
    const args: string[] = [];
    for (let i = 0; i < n; i++) {
      const nl = d.indexOf('\r\n', at);
      if (nl < 0) return;
      const len = Number(d.subarray(at + 1, nl).toString()); // '$<len>'
      if (d.length < nl + 2 + len + 2) return;
      args.push(d.subarray(nl + 2, nl + 2 + len).toString());
      at = nl + 2 + len + 2;
    }
    buf.data = d.subarray(at);
    yield args;
  }
}

/**
 * An endless reply on `s` (`$999999999` and bytes, or `*999999999` and integers), written as fast as the
 * socket takes it, until it closes or STREAM_CAP is sent. The process's RSS is sampled at each write.
 */
function streamEndless(s: net.Socket, kind: 'bulk' | 'array', stream: Stream): void {
  const chunk = Buffer.alloc(64 * 1024, kind === 'bulk' ? 'x' : ':1\r\n');
  s.write(kind === 'bulk' ? '$999999999\r\n' : '*999999999\r\n');
  s.once('close', () => { stream.ended ??= 'closed'; });
  const pump = (): void => {
    while (!s.destroyed) {
      stream.peakRss = Math.max(stream.peakRss, process.memoryUsage.rss());
      if (stream.bytes >= STREAM_CAP) { stream.ended = 'cap'; return; }
      stream.bytes += chunk.length;
      if (!s.write(chunk)) { s.once('drain', pump); return; }
    }
  };
  pump();
}

/**
 * A RESP peer whose answers to scripts (rate()) and GET follow `mode`; everything else is answered plainly. A silent
 * peer answers what it held back once its mode changes, in order, as a paused Redis does when it wakes.
 */
async function startFakeRedis(): Promise<{ url: string; mode: Mode; scripts: number; commands: number; connections: number; stream: Stream; close(): void }> {
  const state = { mode: 'ok' as Mode, scripts: 0, commands: 0, connections: 0, stream: { bytes: 0, ended: null, startRss: 0, peakRss: 0 } as Stream };
  const sockets = new Set<net.Socket>();
  const held: Array<() => void> = [];
  const answer = (calls: number): string => `*${3 * calls}\r\n${':1\r\n:1\r\n:60000\r\n'.repeat(calls)}`;
  const server = net.createServer((s) => {
    state.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    const buf = { data: Buffer.alloc(0) };
    s.on('data', (chunk) => {
      buf.data = Buffer.concat([buf.data, chunk]);
      if (state.mode === 'endless-at-connect') { // the client's first commands (CLIENT SETINFO) get no answer but this
        s.removeAllListeners('data');
        streamEndless(s, 'bulk', state.stream = { bytes: 0, ended: null, startRss: 0, peakRss: 0 });
        return;
      }
      for (const args of commands(buf)) {
        const name = args[0]!.toUpperCase();
        if (name === 'SCRIPT') { s.write(`$40\r\n${'0'.repeat(40)}\r\n`); continue; }
        if (name === 'GET' || name === 'ZCOUNT') state.commands++;
        if ((name === 'GET' || name === 'EVALSHA') && state.mode.startsWith('endless-')) {
          state.commands++;
          if (name === 'EVALSHA') state.scripts++;
          state.stream = { bytes: 0, ended: null, startRss: process.memoryUsage.rss(), peakRss: 0 };
          streamEndless(s, state.mode === 'endless-bulk' ? 'bulk' : 'array', state.stream);
          return;
        }
        if (name !== 'EVALSHA' && name !== 'EVAL') { s.write(state.mode === 'strings' ? '$1\r\nx\r\n' : name === 'GET' ? '$-1\r\n' : name === 'ZCOUNT' ? ':0\r\n' : '+OK\r\n'); continue; }
        state.commands++;
        state.scripts++;
        const calls = Number(args[2]);
        switch (state.mode) {
          case 'ok': s.write(answer(calls)); break;
          case 'oom': s.write('-OOM command not allowed when used memory > \'maxmemory\'.\r\n'); break;
          case 'busy': s.write('-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.\r\n'); break;
          case 'not-resp': s.write('?what\r\n'); break;
          case 'strings': s.write(`*${3 * calls}\r\n${'$1\r\nx\r\n'.repeat(3 * calls)}`); break;
          case 'silent': held.push(() => s.write(answer(calls))); break; // a paused server: answered once it wakes
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    get mode() { return state.mode; },
    set mode(m: Mode) {
      state.mode = m;
      if (m !== 'silent') for (const reply of held.splice(0)) reply();
    },
    get scripts() { return state.scripts; },
    get commands() { return state.commands; },
    get connections() { return state.connections; },
    get stream() { return state.stream; },
    close() { for (const s of sockets) s.destroy(); server.close(); },
  };
}

const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';

let redis: Awaited<ReturnType<typeof startFakeRedis>>;
let server: TestServer;
before(async () => {
  redis = await startFakeRedis();
  server = await startTestServer({
    config: `
localDomains: [example.com]
store:
  redis: { url: "${redis.url}", keyPrefix: "hostile:", timeoutMs: 500 }
sandbox: { timeoutMs: 3000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`,
    scripts: {
      'rcptto.ts': `export default async function (ctx) {
  const r = await rate('rcpt:' + ctx.address.localPart, 100, 60);
  if (!r.allowed) return reject('over the limit');
}`,
    },
  });
});
after(async () => {
  await server?.stop();
  redis?.close();
});

async function rcpt(): Promise<string> {
  const c = await openTransaction(server.port('mx'));
  try {
    return (await c.command('RCPT TO:<user@example.com>')).text;
  } finally {
    await c.quit();
  }
}

test('rate() against a Redis that answers errors, garbage or nothing fails closed with 451; served again once it answers properly', async () => {
  redis.mode = 'ok';
  await until('the store connected and answering', async () => (await rcpt()).startsWith('250'), { timeoutMs: 30_000 });
  for (const mode of ['oom', 'busy', 'not-resp', 'strings', 'silent', 'endless-bulk', 'endless-array'] as const) {
    redis.mode = mode;
    const before = redis.scripts;
    const reply = await rcpt();
    assert.equal(reply, FAIL_CLOSED, `${mode}: fails closed`);
    if (mode !== 'not-resp') assert.ok(redis.scripts > before, `${mode}: the call reached the peer`);
    redis.mode = 'ok';
    // A client that read garbage drops its connection and reconnects: calls fail closed until it is back.
    await until(`${mode}: served again`, async () => (await rcpt()).startsWith('250'), { timeoutMs: 30_000 });
  }
});

test('counter values and AUTH failure counts from a Redis that answers strings fail closed instead of reading as NaN', async () => {
  redis.mode = 'ok';
  const store = new RedisCounterStore({ url: redis.url, keyPrefix: 'direct:', timeoutMs: 500 }, createLogger('silent'));
  try {
    // Until its connection is up every call fails at once: wait for one that reaches the peer and is answered.
    await until('the store connected', async () => (await store.get('probe').then(() => true, () => false)), { timeoutMs: 30_000 });
    redis.mode = 'strings';
    const failures = store.authFailures();
    const now = Date.now();
    for (const [what, call] of [
      ['get', () => store.get('c')],
      ['add', () => store.add('c', 1, 60)],
      ['authFailures.add', () => failures.add('192.0.2.1', now, now - 60_000)],
      ['authFailures.count', () => failures.count('192.0.2.1', now - 60_000)],
    ] as const) {
      const before = redis.commands;
      await assert.rejects(call(), (err) => err instanceof StoreUnavailable && /unexpected reply/.test(err.message), `${what}: fails closed`);
      assert.ok(redis.commands > before, `${what}: answered by the peer`);
    }
  } finally {
    redis.mode = 'ok';
    await store.close();
  }
});

test('a peer streaming an endless reply (a bulk string, an array) is cut after 1 MiB: the call fails closed, one outage line, memory flat, served again after', async () => {
  // A time limit of a minute: the silence check (5 s or timeoutMs) must not be what cuts the stream. The client
  // buffered the reply whole: 2 GB of RSS in 7 s for a bulk string, 1.3 GB for 64 MiB of an array.
  const { store, lines } = loggedStore(redis.url, 'endless:', 60_000);
  try {
    redis.mode = 'ok';
    await until('the store connected', async () => (await store.get('probe').then(() => true, () => false)), { timeoutMs: 30_000 });
    // A byte that is no RESP type: the client drops the connection and makes a new one itself (its
    // 'reconnecting'), which must be watched as the first was.
    redis.mode = 'not-resp';
    await assert.rejects(store.rate('r', 100, 60), StoreUnavailable);
    redis.mode = 'ok';
    await until('served again', async () => (await store.get('c').then((v) => v === 0, () => false)), { timeoutMs: 30_000 });
    for (const mode of ['endless-bulk', 'endless-array'] as const) {
      redis.mode = mode;
      const before = redis.commands;
      const outages = lines.filter((l) => l.includes('store: Redis sent a reply larger')).length;
      const call = store.get('c');
      call.catch(() => undefined);
      await until(`${mode}: the stream ended`, () => redis.commands > before && redis.stream.ended !== null, { timeoutMs: 60_000 });
      const { bytes, ended, startRss, peakRss } = redis.stream;
      const grew = Math.round((peakRss - startRss) / 1048576);
      assert.equal(ended, 'closed', `${mode}: the connection was cut (the peer sent ${bytes} bytes; RSS grew ${grew} MiB)`);
      await assert.rejects(call, StoreUnavailable, `${mode}: fails closed`);
      // 1 MiB read, the rest in the two kernel socket buffers.
      assert.ok(bytes < 32 * 1024 * 1024, `${mode}: cut after ${bytes} bytes`);
      assert.equal(lines.filter((l) => l.includes('store: Redis sent a reply larger')).length, outages + 1, `${mode}: one outage line`);
      redis.mode = 'ok';
      await until(`${mode}: served again`, async () => (await store.get('c').then((v) => v === 0, () => false)), { timeoutMs: 30_000 });
    }
  } finally {
    redis.mode = 'ok';
    await store.close();
  }
});

test('a peer streaming without end at every new connection is connected to with a growing delay, not in a loop', async () => {
  // Cut at 1 MiB, each connection was replaced by a new one at once: about 100 connections a second, each
  // reading 1 MiB (a third of a core). The client's own delay between attempts (50 ms doubling to 2 s) now
  // applies: 7 connections take at least 50 + 100 + 200 + 400 + 800 + 1600 ms (a lower bound: load only adds).
  const peer = await startFakeRedis();
  peer.mode = 'endless-at-connect';
  const { store, lines } = loggedStore(peer.url, 'loop:', 500);
  const start = performance.now();
  try {
    await until('the first stream', () => peer.stream.bytes > 0, { timeoutMs: 30_000 });
    const first = peer.stream;
    await until('7 connections', () => peer.connections >= 7, { timeoutMs: 60_000 });
    // Cut during the client's first commands too (the 5 s wait for their answers let it stream on till then).
    assert.equal(first.ended, 'closed');
    assert.ok(first.bytes < 32 * 1024 * 1024, `cut after ${first.bytes} bytes`);
    const took = performance.now() - start;
    assert.ok(took >= 2000, `7 connections in ${Math.round(took)} ms`);
    assert.equal(lines.filter((l) => l.includes('store: Redis sent a reply larger')).length, 1, 'one outage line');
    await assert.rejects(store.get('c'), StoreUnavailable);
  } finally {
    await store.close();
    peer.close();
  }
});

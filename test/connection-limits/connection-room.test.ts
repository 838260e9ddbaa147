// engine/connection-limits/connection-room.ts on a plain Node HTTP server, with raw sockets from several loopback
// addresses (each 127.x.y.z is another client). The admin listener and the account page use it (test/admin,
// test/accounts, test/cluster/admin.test.ts); here what they do not show: the limit is read at each accept (a
// reload changes it for the next connection), an episode over it is reported once, and a client that never
// reads its answer holds no slot for it.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { shareConnectionRoom } from '../../engine/connection-limits/connection-room.ts';
import { getFrom, rawHttp } from '../helpers/http-per-address.ts';
import { until } from '../helpers/wait.ts';

let limit = 2;
const reports: Array<[string, string, number]> = [];
let bigAnswers = 0;
const BIG = 'x'.repeat(16 * 1024 * 1024); // more than any socket buffers hold
let HUGE: string | undefined;
/** The most the kernel's buffers of a loopback connection can hold (the sender's and the receiver's maxima). */
const KERNEL_BUFFERS = ['tcp_wmem', 'tcp_rmem'].reduce((sum, name) => sum + Number(readFileSync(`/proc/sys/net/ipv4/${name}`, 'utf8').trim().split(/\s+/)[2]), 0);
const HUGE_SIZE = KERNEL_BUFFERS + 32 * 1024 * 1024;
const server = http.createServer((req, res) => {
  if (req.url === '/huge') {
    res.end(HUGE ??= 'x'.repeat(HUGE_SIZE));
    return;
  }
  if (req.url === '/big') {
    res.end(BIG);
    bigAnswers++;
    return;
  }
  res.end('ok');
});
shareConnectionRoom(server, {
  maxConnections: 64,
  perAddress: {
    limit: () => limit,
    countedAs: (address) => address,
    refused: (address, l) => reports.push(['refused', address, l]),
    madeRoom: (address, l) => reports.push(['made room', address, l]),
  },
});
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const port = (server.address() as AddressInfo).port;
after(() => { server.closeAllConnections(); server.close(); });

function tracked(sockets: net.Socket[]): number[] {
  const closedOnes: number[] = [];
  sockets.forEach((s, i) => s.once('close', () => closedOnes.push(i)));
  return closedOnes;
}

test('the limit is read at each accept, and an episode over it is reported once, then again after coming back under', async () => {
  limit = 3; // as a reload would
  const held: net.Socket[] = [];
  for (let i = 0; i < 3; i++) held.push(await rawHttp(port, '127.0.3.3'));
  const closedOnes = tracked(held);
  try {
    assert.match(await getFrom(port, '127.0.3.3', '/'), /^HTTP\/1\.1 200 /, 'the fourth is over the new limit, and answered');
    await until('the oldest closed for it', () => closedOnes.length === 1);
    assert.deepEqual(closedOnes, [0]);
    assert.deepEqual(reports, [['made room', '127.0.3.3', 3]], 'one report');
    // That one closed after its answer: back under. Two more, held: the second is over again.
    const more = [await rawHttp(port, '127.0.3.3'), await rawHttp(port, '127.0.3.3')];
    held.push(...more);
    const closedMore = tracked(more);
    await until('the next oldest closed for it', () => closedOnes.length === 2);
    assert.deepEqual(closedOnes, [0, 1]);
    assert.deepEqual(reports, [['made room', '127.0.3.3', 3], ['made room', '127.0.3.3', 3]], 'a new episode, a new report');
    held.push(await rawHttp(port, '127.0.3.3')); // over again, never under meanwhile: the same episode
    await until('the next oldest closed for it', () => closedOnes.length === 3);
    assert.deepEqual([closedOnes, closedMore], [[0, 1, 2], []]);
    assert.equal(reports.length, 2, 'no report within the episode');
  } finally {
    for (const h of held) h.destroy();
    reports.length = 0;
    limit = 2;
  }
});

test('a client that asked and never reads its answer holds no slot for it: a new connection of its address takes it', async () => {
  limit = 1;
  const stuck = await rawHttp(port, '127.0.3.4');
  stuck.pause(); // never reads
  stuck.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
  try {
    await until('the answer made', () => bigAnswers === 1);
    // Until the socket buffers are full its answer may still move (the first new one then refused): not for long.
    await until('a new one answered, not closed for the stuck one', async () => /^HTTP\/1\.1 200 /.test(await getFrom(port, '127.0.3.4', '/')));
    // A client that does not read does not see the close either: a write fails (a CRLF, which HTTP ignores).
    await until('the stuck one closed for it', () => stuck.destroyed || (stuck.write('\r\n'), false));
    assert.deepEqual(reports.map(([, address]) => address), ['127.0.3.4'], 'one report for the episode');
  } finally {
    stuck.destroy();
    reports.length = 0;
    limit = 2;
  }
});

test('a client that pipelined requests and reads none of the answers holds no slot for them either', async () => {
  limit = 1;
  bigAnswers = 0;
  const stuck = await rawHttp(port, '127.0.3.5');
  stuck.pause(); // never reads
  stuck.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(3));
  try {
    // The second answer is made while the first still fills the socket: it waits behind it, unsent.
    await until('two answers made', () => bigAnswers >= 2);
    await until('a new one answered, not closed for the stuck one', async () => /^HTTP\/1\.1 200 /.test(await getFrom(port, '127.0.3.5', '/')));
    await until('the stuck one closed for it', () => stuck.destroyed || (stuck.write('\r\n'), false));
  } finally {
    stuck.destroy();
    reports.length = 0;
    limit = 2;
  }
});

// A flood of new connections must not close a client's connection before its request is read: one accepted
// in the same turn as the next is not the next one's to close. The server's event loop is held while a client
// process connects, sends its request, and connects again behind it: both wait in the backlog and are
// accepted in one turn, the request not read yet.
test('a connection accepted in the same turn as the next one is not closed for it: its request, sent with its connect, is answered', async () => {
  limit = 1;
  const dir = mkdtempSync(join(tmpdir(), 'room-'));
  const ready = join(dir, 'ready');
  const held = await rawHttp(port, '127.0.3.6');
  // Answered once (kept alive, idle since): the server has it, and it is the one to close.
  held.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await once(held, 'data');
  const client = spawn('python3', ['-c', String.raw`
import socket, sys
port, ready = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(('127.0.0.1', port), source_address=('127.0.3.6', 0))
s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
x = socket.create_connection(('127.0.0.1', port), source_address=('127.0.3.6', 0))
open(ready, 'w').close()
s.settimeout(30)
reply = b''
try:
    while True:
        d = s.recv(4096)
        if not d: break
        reply += d
except Exception as e:
    pass
print(reply.decode('latin1').split('\r\n')[0] or 'closed unanswered', flush=True)
`, String(port), ready], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  client.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  try {
    // Hold this process (the server's) until both connections wait in the backlog.
    for (const start = Date.now(); !existsSync(ready) && Date.now() - start < 60_000;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    assert.ok(existsSync(ready), 'the client connected twice');
    await once(client, 'exit');
    assert.equal(out.trim(), 'HTTP/1.1 200 OK');
  } finally {
    held.destroy();
    client.kill();
    rmSync(dir, { recursive: true, force: true });
    reports.length = 0;
    limit = 2;
  }
});

// A connection whose request is under way (part of it sent) goes after those that never sent a byte, even
// older ones; the first one closed for a new one is the oldest silent one.
test('a connection with part of its request sent is closed after the silent ones of its address, even if older', async () => {
  limit = 3;
  const partial = await rawHttp(port, '127.0.3.7');
  partial.write('GET / HTTP/1.1\r\n');
  const silent = [await rawHttp(port, '127.0.3.7'), await rawHttp(port, '127.0.3.7')];
  const closedOnes = tracked([partial, ...silent]);
  try {
    // A round trip from another address: the server has read the three (what the first sent) by its answer.
    assert.match(await getFrom(port, '127.0.3.8', '/'), /^HTTP\/1\.1 200 /);
    assert.match(await getFrom(port, '127.0.3.7', '/'), /^HTTP\/1\.1 200 /, 'the fourth is answered');
    await until('one closed for it', () => closedOnes.length > 0);
    assert.deepEqual(closedOnes, [1], 'the oldest silent one, not the older partial one');
    partial.write('Host: x\r\nConnection: close\r\n\r\n');
    const [reply] = await once(partial, 'data') as [Buffer];
    assert.match(reply.toString(), /^HTTP\/1\.1 200 /, 'its request answered');
  } finally {
    for (const s of [partial, ...silent]) s.destroy();
    reports.length = 0;
    limit = 2;
  }
});

// An answer counted as done once it was made (res.end), its bytes still to leave: a new connection of its
// address closed a client that was reading a large answer slowly, mid-transfer (a /metrics of many series cut
// by the next scrape, or a browser's other connection). An answer whose bytes have moved on since it was made
// (or since the last new connection looked) now keeps its connection; one that stopped moving does not.
test('a client reading a large answer, its bytes moving: a new connection of its address does not cut it', async () => {
  limit = 1;
  const reader = await rawHttp(port, '127.0.3.9');
  reader.write('GET /huge HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  let got = 0;
  let paused = false;
  const enough = new Promise<void>((resolve) => {
    reader.on('data', (d: Buffer) => {
      got += d.length;
      // More than the socket buffers of both ends can hold: some left the server's queue
      // after the answer was made.
      if (got > KERNEL_BUFFERS && !paused) { paused = true; reader.pause(); resolve(); }
    });
  });
  const ended = new Promise<number>((resolve) => reader.once('close', () => resolve(got)));
  try {
    await enough;
    // Over the cap with nothing else to close: refused at once, not the reader cut.
    assert.equal(await getFrom(port, '127.0.3.9', '/'), '', 'the new one closed unanswered');
    reader.resume();
    assert.ok(await ended > HUGE_SIZE, 'the whole answer read');
    assert.deepEqual(reports, [['refused', '127.0.3.9', 1]]);
  } finally {
    reader.destroy();
    reports.length = 0;
    limit = 2;
  }
});

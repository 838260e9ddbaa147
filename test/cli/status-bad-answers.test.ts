// `postern status` against a socket that answers, but not with a status: the server's own error (HTTP 500, which
// the supervisor sends when gathering the status throws), bytes that are not HTTP (another program on the path),
// or an answer without end. Each is a server that runs and does not answer properly: exit 4 with what it sent,
// never "not running" (exit 3, which sends an on-call to start a second server) nor a crash with a stack trace
// after the client's memory filled. Nor when the server closes the connection unanswered. (The real server's 64
// connections full of half-sent requests: test/cli/status-socket-removed.test.ts, on its server.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';

const dirs: string[] = [];
after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }); });

/** A unix socket at <dataDir>/postern.sock whose every connection gets `answer`. */
async function answering(answer: (s: net.Socket) => void): Promise<{ dataDir: string; close(): Promise<void> }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'postern-status-answer-'));
  dirs.push(dataDir);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined).on('close', () => sockets.delete(s));
    answer(s);
  });
  await new Promise<void>((resolve) => server.listen(join(dataDir, 'postern.sock'), resolve));
  return {
    dataDir,
    close: () => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

test('the server answers HTTP 500 with its error: exit 4 with that error, not "not running"', async () => {
  const peer = await answering((s) => s.end('HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nerror: EIO: i/o error, scandir spool/queue\n'));
  try {
    const r = await runCli(['status', '--data-dir', peer.dataDir]);
    assert.equal(r.code, 4, r.stderr);
    assert.doesNotMatch(r.stderr, /not running/);
    assert.match(r.stderr, /500/);
    assert.match(r.stderr, /EIO: i\/o error, scandir spool\/queue/);
    assert.equal(r.stdout, '');
  } finally {
    await peer.close();
  }
});

test('something on the socket that does not speak HTTP: exit 4, not "not running"', async () => {
  const peer = await answering((s) => s.end('220 hello, I am not postern\r\n'));
  try {
    const r = await runCli(['status', '--data-dir', peer.dataDir]);
    assert.equal(r.code, 4, r.stderr);
    assert.doesNotMatch(r.stderr, /not running/);
    assert.match(r.stderr, /gave no status/);
  } finally {
    await peer.close();
  }
});

test('a 200 whose body is not JSON: exit 4, not "not running"', async () => {
  const peer = await answering((s) => s.end('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"summary": "cut sh'));
  try {
    const r = await runCli(['status', '--data-dir', peer.dataDir]);
    assert.equal(r.code, 4, r.stderr);
    assert.doesNotMatch(r.stderr, /not running/);
    assert.match(r.stderr, /gave no status/);
  } finally {
    await peer.close();
  }
});

test('an answer cut short (the connection closed before the length it announced): exit 4 at once, not a hang ending in exit 13', async () => {
  const peer = await answering((s) => s.end('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"summary":'));
  try {
    const r = await runCli(['status', '--data-dir', peer.dataDir]);
    assert.equal(r.code, 4, r.stderr);
    assert.doesNotMatch(r.stderr, /unsettled|not running|does not answer/);
    assert.match(r.stderr, /gave no status: the connection closed before the whole answer came/);
  } finally {
    await peer.close();
  }
});

test('an answer without end: the client stops reading at its bound, exit 4, no crash', { timeout: 120_000 }, async () => {
  let sent = 0;
  const peer = await answering((s) => {
    s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"summary":"');
    const chunk = Buffer.alloc(1 << 20, 0x61);
    const pump = (): void => { while (!s.destroyed && s.write(chunk)) sent += chunk.length; };
    s.on('drain', pump);
    pump();
  });
  try {
    const r = await runCli(['status', '--data-dir', peer.dataDir], { timeoutMs: 100_000 });
    assert.equal(r.signal, null, 'not killed by the hang guard');
    assert.equal(r.code, 4, r.stderr);
    assert.doesNotMatch(r.stderr, /RangeError|Invalid string length|\n\s+at /);
    assert.match(r.stderr, /too large/);
    // It stopped reading near its bound (64 MiB), not at the end of a string the size of its memory.
    assert.ok(sent < 200 * (1 << 20), `the server wrote ${sent} bytes before the client gave up`);
  } finally {
    await peer.close();
  }
});

test('a server that closes the connection unanswered: exit 4 "closed without an answer", not "not running"', async () => {
  const peer = await answering((s) => s.once('data', () => s.destroy()));
  try {
    const r = await runCli(['status', '--data-dir', peer.dataDir]);
    assert.equal(r.code, 4, r.stderr);
    assert.doesNotMatch(r.stderr, /not running/);
    assert.match(r.stderr, /closed the connection without an answer/);
  } finally {
    await peer.close();
  }
});

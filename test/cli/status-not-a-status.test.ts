// `postern status` against a socket that answers 200 with JSON that is not a status: another program's HTTP service
// on the path (`{"status":"ok"}`), or a body of `null`. The command read fields off whatever came: `null` crashed it
// with a TypeError and a stack trace, and any JSON object was taken for a healthy server, exit 0, with nothing of
// postern's in it. Each is exit 4 ("gave no status"), as the other answers that are not a status are
// (status-bad-answers.test.ts).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';

const dirs: string[] = [];
after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }); });

/** A unix socket at <dataDir>/postern.sock answering every request 200 with `body`. */
async function answering(body: string): Promise<{ dataDir: string; close(): Promise<void> }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'postern-status-json-'));
  dirs.push(dataDir);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined).on('close', () => sockets.delete(s));
    s.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
  await new Promise<void>((resolve) => server.listen(join(dataDir, 'postern.sock'), resolve));
  return { dataDir, close: () => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }) };
}

for (const [what, body] of [['null', 'null'], ['another service\'s JSON object', '{"status":"ok"}'], ['a JSON array', '[]'], ['a JSON string', '"ok"']] as const) {
  test(`a 200 whose JSON is ${what}: exit 4 "gave no status", no crash, not exit 0`, async () => {
    const peer = await answering(body);
    try {
      const r = await runCli(['status', '--data-dir', peer.dataDir]);
      assert.equal(r.code, 4, `${r.code} ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /TypeError|\n\s+at /);
      assert.match(r.stderr, /gave no status/);
      assert.equal(r.stdout, '');
    } finally {
      await peer.close();
    }
  });
}

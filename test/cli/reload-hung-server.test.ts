/**
 * `postern reload --timeout N` ends within N seconds (and a short last wait) when the server stops answering its
 * status socket after the reload was asked for: each question to it waited the status command's own 10 s, so a
 * hung supervisor kept `systemctl reload` (and its own timeout) waiting past what it was told. The server here is
 * a process that holds the data directory's lock (the SIGHUP goes to it) and this process's status socket, which
 * answers the first question and none after. The status command's usual wait is made far longer than the test's timeout, so
 * a question that does not take --timeout's remainder fails the test by its timeout.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

process.env.POSTERN_STATUS_ANSWER_MS = '600000'; // read as status.ts loads
const { reloadCommand } = await import('../../engine/cli/reload.ts');
const { statusSocket } = await import('../../engine/cluster/process-model.ts');
const { LOCK_FILE } = await import('../../engine/spool/data-dir-lock.ts');

let dataDir = '';
after(() => rm(dataDir, { recursive: true, force: true }));

test('reload --timeout 1 against a server that stops answering after the SIGHUP: exit 4 "does not answer", within its timeout', { timeout: 60_000 }, async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'postern-reload-hung-'));
  const holder = spawn(process.execPath, ['-e', "process.on('SIGHUP', () => process.stdout.write('hup\\n')); process.stdout.write('ready\\n'); setInterval(() => {}, 1e9)"], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  holder.stdout.on('data', (d: Buffer) => { out += d; });
  await once(holder.stdout, 'data'); // 'ready': its SIGHUP handler is set
  await writeFile(join(dataDir, LOCK_FILE), `${holder.pid} -\n`); // a lock as the server writes it (no start time: the PID alone)
  const body = JSON.stringify({
    lastError: null, cluster: { processes: [{ role: 'worker', index: 0, ready: true }] },
    generations: { 'worker 0': { pid: process.pid, generation: 1, checks: 1, supersededBuilds: 0 } },
  });
  let questions = 0;
  const held: Socket[] = [];
  const server = createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => {
      if (questions++ === 0) s.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      else held.push(s); // hung from here: read, never answered
    });
  });
  await new Promise<void>((r) => server.listen(statusSocket(dataDir), r));
  const stderr: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string) => { stderr.push(String(chunk)); return true; }) as typeof process.stderr.write;
  try {
    const code = await reloadCommand({ dataDir, timeout: '1' });
    process.stderr.write = write;
    assert.equal(code, 4, stderr.join(''));
    assert.match(stderr.join(''), /does not answer on .* within [0-9.]+ s: it is hung or overloaded/);
    assert.match(out, /hup/, 'the reload was asked for');
    assert.ok(questions >= 2, 'asked again after the SIGHUP');
  } finally {
    process.stderr.write = write;
    holder.kill('SIGKILL');
    for (const s of held) s.destroy();
    server.close();
  }
});

// Log rotation as docs/operations.md describes it, against a real `postern serve` (supervisor, worker,
// queue process) whose stdout is appended to a file, as `StandardOutput=append:` or `>>` make it:
// - logrotate (the real one, with examples/logrotate/postern): after copytruncate copied the file and cut
//   it to nothing, the next lines start at its beginning (no hole of NUL bytes where the old ones were),
//   each a whole JSON line;
// - SIGUSR1 / SIGUSR2, what many rotation setups send, to the whole process group: logged and ignored;
//   no process opens Node's inspector (which would let any local user run code as the server) and none
//   ends; the server still takes mail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

const LOGROTATE = ['/usr/sbin/logrotate', '/sbin/logrotate'].find((p) => spawnSync(p, ['--version']).status === 0);

test('logrotate copytruncate keeps a whole JSON log from its first byte; SIGUSR1/SIGUSR2 to the group are logged and change nothing else', { timeout: 180_000, skip: !LOGROTATE && 'logrotate not installed (test/setup-system.sh installs it)' }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-logrotate-'));
  await mkdir(join(dir, 'scripts'));
  const port = await freePort();
  await writeFile(join(dir, 'postern.yaml'), [
    `dataDir: ${JSON.stringify(join(dir, 'data'))}`,
    `scripts: ${JSON.stringify(join(dir, 'scripts'))}`,
    'workers: 1',
    'localDomains: [example.test]',
    'listeners:',
    `  - { name: in, listen: "127.0.0.1:${port}", reverseDns: false, limits: { greetingDelayMs: 0 } }`,
    '',
  ].join('\n'));
  const logFile = join(dir, 'postern.log');
  const fd = openSync(logFile, 'a'); // O_APPEND, as `>>` and systemd's `StandardOutput=append:` open it
  const server = spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', join(dir, 'postern.yaml')], {
    cwd: dir, stdio: ['ignore', fd, 'pipe'], detached: true, env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  closeSync(fd);
  let stderr = '';
  server.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
  const lines = async (): Promise<Array<Record<string, unknown>>> => {
    const text = await readFile(logFile, 'utf8');
    assert.ok(!text.includes('\0'), 'no NUL bytes: the writes follow the cut, not the old offset');
    return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>); // every line whole JSON
  };
  const logged = (what: string, test: (l: Record<string, unknown>) => boolean): Promise<void> =>
    until(what, async () => server.exitCode === null && (await lines()).some(test), { timeoutMs: 60_000 });
  try {
    await logged('the server started', (l) => l.msg === 'supervisor started');
    await submitMessage(port, 'a@example.org', ['b@example.test']);
    await logged('the first message', (l) => typeof l.msg === 'string' && / accepted from=<a@example\.org>/.test(l.msg));

    // logrotate with the shipped file (its path pointed at this log): copy, then cut to nothing while the server writes.
    const conf = join(dir, 'logrotate.conf');
    await writeFile(conf, (await readFile(join(ROOT, 'examples/logrotate/postern'), 'utf8')).replace(/^\/var\/log\/postern\/postern\.log \{$/m, `${logFile} {`), { mode: 0o644 });
    const rotate = spawnSync(LOGROTATE!, ['--force', '--state', join(dir, 'logrotate.state'), conf], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(rotate.status, 0, rotate.stderr);
    assert.match(await readFile(conf, 'utf8'), new RegExp(`^${logFile.replace(/[.]/g, '\\.')} \\{$`, 'm'), 'the shipped file names one log, at the start of a line');
    const id = await submitMessage(port, 'c@example.org', ['d@example.test']);
    await logged('the message after the cut', (l) => l.id === id);
    const after = await lines();
    assert.ok(!after.some((l) => l.msg === 'supervisor started'), 'the old lines are only in the copy');
    assert.match(await readFile(`${logFile}.1`, 'utf8'), /supervisor started/);

    for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
      process.kill(-server.pid!, signal); // the whole group: supervisor, worker and queue process
      await logged(`${signal} logged`, (l) => l.signal === signal && typeof l.msg === 'string' && l.msg.startsWith(`${signal} ignored`));
    }
    const last = await submitMessage(port, 'e@example.org', ['f@example.test']);
    await logged('a message after the signals', (l) => l.id === last);
    assert.doesNotMatch(stderr, /Debugger listening|inspector/i, 'no process opened the inspector');
    assert.ok(!(await lines()).some((l) => /replacing it|exited|died/.test(String(l.msg))), 'no process ended');
    server.kill('SIGTERM');
    assert.equal(await exited, 0);
  } finally {
    if (server.exitCode === null) {
      server.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  }
});

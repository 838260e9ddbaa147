// `npm run postern -- serve` (and `npm start`) under a process supervisor that signals npm, not node: SIGTERM
// to npm stops the server itself — it drains and exits, no `node … serve` is left accepting mail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { needs } from '../helpers/example.ts';
import { freePort } from '../helpers/cluster.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

test('SIGTERM to npm stops the server it started: exit 0, the server process gone', needs('npm'), async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-npm-'));
  try {
    await mkdir(join(dir, 'scripts'));
    await writeFile(join(dir, 'postern.yaml'), `dataDir: ./data\nscripts: ./scripts\nworkers: 1\nlisteners:\n  - { name: mx, listen: "127.0.0.1:${await freePort()}", limits: { greetingDelayMs: 0 } }\n`);
    const npm = spawn('npm', ['--prefix', REPO, 'run', 'postern', '--', 'serve', '--config', join(dir, 'postern.yaml')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    npm.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    npm.stderr.setEncoding('utf8').on('data', (d: string) => { out += d; });
    const exited = new Promise<number | null>((r) => npm.once('exit', (code) => r(code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no start within 60 s:\n${out}`)), 60_000);
      const check = (): void => { if (out.includes('"msg":"supervisor started"')) { clearTimeout(timer); resolve(); } };
      npm.stdout.on('data', check);
      npm.once('exit', () => { clearTimeout(timer); reject(new Error(`npm exited:\n${out}`)); });
    });
    const serverPid = Number(/"pid":(\d+),"component":"supervisor"/.exec(out)![1]);
    assert.notEqual(serverPid, npm.pid, 'the server is npm\'s child, not npm');
    npm.kill('SIGTERM');
    assert.equal(await exited, 0, out);
    assert.match(out, /"signal":"SIGTERM","msg":"shutting down"/);
    // npm is gone; the server it started must be too (a leftover would keep taking mail).
    await new Promise((r) => setTimeout(r, 0));
    assert.throws(() => process.kill(serverPid, 0), /ESRCH/, 'the server process is gone');
    assert.equal(await readFile(join(dir, 'data', 'postern.lock'), 'utf8').catch(() => 'released'), 'released', 'the data directory lock is released');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

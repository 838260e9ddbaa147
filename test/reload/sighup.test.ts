// SIGHUP reloads a running `postern serve`, and `postern status` reports it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until } from '../helpers/wait.ts';

test('kill -HUP forces a reload; postern status shows the generation and counters', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-hup-'));
  await mkdir(join(dir, 'scripts'));
  await writeFile(join(dir, 'scripts', 'mailfrom.js'), 'export default () => {};');
  const config = join(dir, 'postern.yaml');
  await writeFile(config, `dataDir: ./data\nscripts: ./scripts\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0" }\n`);
  const child = spawn(process.execPath, ['engine/cli/main.ts', 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d; });
  try {
    const statusFile = join(dir, 'data', 'status.json');
    const status = async (): Promise<{ generation: number; reloads: number; pid: number } | null> =>
      JSON.parse(await readFile(statusFile, 'utf8').catch(() => 'null'));
    await until('the server writes its status file', async () => (await status()) !== null);
    const before = (await status())!;
    assert.equal(before.pid, child.pid);
    child.kill('SIGHUP');
    await until('the status file counts the reload', async () => (await status())!.reloads !== before.reloads);
    const after = (await status())!;
    assert.equal(after.reloads, before.reloads + 1);
    assert.ok(after.generation > before.generation);
    await until('the reload logged with its reason', () => /"reason":"SIGHUP".*"msg":"reloaded"/.test(out));
    const cli = spawnSync(process.execPath, ['engine/cli/main.ts', 'status', '--config', config], { encoding: 'utf8' });
    assert.equal(cli.status, 0, cli.stderr);
    assert.equal(JSON.parse(cli.stdout).reloads, after.reloads);
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  }
});

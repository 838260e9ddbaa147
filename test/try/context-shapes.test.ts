/**
 * `postern try` gives each hook's script the context the server gives it: the shape postern.d.ts declares, checked
 * inside the sandbox by the walker scripts of test/sandbox/typings-at-runtime.test.ts. A script tried on a context
 * that lacks a declared field (`try predelivery`'s `message.size`, say) decides differently in try than live.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DTS_PATH } from '../../engine/sandbox/api/generate-dts.ts';
import { HOOK_NAMES } from '../../engine/sandbox/index.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { runCli } from '../helpers/cli.ts';
import { CONTEXT_TYPE, declaredShapes } from '../sandbox/helpers/declared-shapes.ts';
import { shapeWalkingScript } from '../sandbox/helpers/shape-walker.ts';

test('postern try gives every hook\'s script a context of the declared shape', async () => {
  const shapes = declaredShapes(DTS_PATH, Object.values(CONTEXT_TYPE));
  const dir = await mkdtemp(join(tmpdir(), 'postern-try-shapes-'));
  try {
    await mkdir(join(dir, 'scripts'));
    for (const hook of HOOK_NAMES) await writeFile(join(dir, 'scripts', `${hook}.js`), shapeWalkingScript(hook, shapes[CONTEXT_TYPE[hook]]!));
    await writeFile(join(dir, 'users'), `bob@example.com:${await hashPassword('s3cret')}\n`);
    await writeFile(join(dir, 'postern.yaml'), configYaml({
      dataDir: join(dir, 'data'), scripts: join(dir, 'scripts'), users: join(dir, 'users'), localDomains: ['example.com'],
      listeners: [testListener('in', { auth: { mechanisms: ['PLAIN'] } })],
      delivery: { enabled: true, route: { smarthost: { host: '127.0.0.1', port: 2525 } }, tls: { mode: 'none' } },
    }));
    // Three runs for the seven hooks: `try data` walks connect, helo, mailfrom and rcptto first, with the same
    // steps as `try connect` … `try rcptto` stop after (engine/try/run-try.ts); predelivery and auth are off that walk.
    const runs: Array<[string, string[], string[], string?]> = [
      ['data', ['connect', 'helo', 'mailfrom', 'rcptto', 'data'], ['--from', 'a@sender.example', '--to', 'b@example.com']],
      ['predelivery', ['predelivery'], ['--from', 'a@sender.example', '--to', 'b@example.com']],
      ['auth', ['auth'], ['--user', 'bob@example.com', '--password-file', '-'], 's3cret\n'],
    ];
    const problems: string[] = [];
    for (const [tried, hooks, args, input] of runs) {
      const r = await runCli(['try', tried, '-c', join(dir, 'postern.yaml'), '--json', ...args], { input });
      const steps = (JSON.parse(r.stdout) as { steps: Array<{ logs: Array<{ msg: string }> }> }).steps;
      const lines = steps.flatMap((s) => s.logs.map((l) => l.msg)).filter((m) => m.startsWith('SHAPE '));
      for (const hook of hooks) {
        assert.ok(lines.includes(`SHAPE ${hook} ${hook === 'connect' ? lines.find((l) => l.startsWith('SHAPE connect'))!.split(' ')[2] : 'try.invalid'} done`), `try ${tried}: the ${hook} script ran (${lines.join(' | ')}; ${r.stderr})`);
      }
      problems.push(...lines.filter((l) => l.split(' ')[3] === 'problem').map((l) => `try ${tried}: ${l}`));
    }
    assert.deepEqual([...new Set(problems)], []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

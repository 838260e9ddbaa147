/**
 * `postern try` calls a stand-in for each hook without a script, to show the context it would get. The server
 * runs no call at all for such a hook, so a stand-in must not be able to fail: it runs in no isolate and under
 * no deadline. Under load a stand-in that went through the sandbox missed sandbox.timeoutMs (waiting for an
 * isolate counts) and try reported a script error (exit 3) for a session the server would have accepted.
 * Checked by counters (the sandbox's own call count), not by timing: with timeoutMs at its minimum (1 ms),
 * no stand-in reaches an isolate, while a real script that runs on past its deadline still fails as live.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadStartConfig } from '../../engine/config/start-config.ts';
import { TrySession } from '../../engine/try/try-session.ts';
import { tryHook } from '../../engine/try/run-try.ts';
import { configYaml, testListener } from '../helpers/config.ts';

async function tried(scripts: Record<string, string>, check: (session: TrySession) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-try-standins-'));
  try {
    await mkdir(join(dir, 'scripts'));
    for (const [file, source] of Object.entries(scripts)) await writeFile(join(dir, 'scripts', file), source);
    await writeFile(join(dir, 'postern.yaml'), configYaml({
      dataDir: join(dir, 'data'), scripts: join(dir, 'scripts'), localDomains: ['example.com'],
      sandbox: { timeoutMs: 1, isolates: 1 },
      listeners: [testListener('in')],
    }));
    const session = await TrySession.open(loadStartConfig({ configPath: join(dir, 'postern.yaml') }), {});
    try {
      await check(session);
    } finally {
      await session.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('stand-ins run in no isolate and under no deadline: a session without scripts accepts with timeoutMs 1, the sandbox ran no call', async () => {
  await tried({}, async (session) => {
    const r = await tryHook(session, 'data', { from: 'a@sender.example', to: ['b@example.com'] });
    assert.deepEqual(r.steps.map((s) => [s.step, s.outcome]), [['connect', 'accept'], ['helo', 'accept'], ['mailfrom', 'accept'], ['rcptto', 'accept'], ['data', 'accept']]);
    assert.equal(r.exitCode, 0);
    // Each stand-in was still called, so its context is shown.
    assert.deepEqual(r.steps.flatMap((s) => s.calls.map((c) => [c.hook, c.failure, c.verdict])),
      ['connect', 'helo', 'mailfrom', 'rcptto', 'data'].map((h) => [h, null, undefined]));
    assert.equal(r.steps.find((s) => s.step === 'rcptto')!.calls[0]!.ctx.constructor, Object);
    const stats = await session.built.generation.sandboxFor(session.listener).stats();
    assert.equal(stats.calls, 0, 'no stand-in reached an isolate');
    assert.equal(stats.isolates.length, 0, 'no isolate was built for stand-ins alone');
  });
});

test('a real script that runs past sandbox.timeoutMs still fails in try as live (exit 3), beside stand-ins that do not', async () => {
  await tried({ 'rcptto.js': 'export default function () { for (;;) {} }' }, async (session) => {
    const r = await tryHook(session, 'rcptto', { from: 'a@sender.example', to: ['b@example.com'] });
    assert.equal(r.exitCode, 3);
    const rcpt = r.steps.find((s) => s.step === 'rcptto')!;
    assert.equal(rcpt.outcome, 'error');
    assert.equal(rcpt.calls[0]!.failure?.kind, 'timeout');
    assert.match(rcpt.reply, /^451 4\.3\.0/);
    assert.deepEqual(r.steps.filter((s) => s.step !== 'rcptto').map((s) => s.outcome), ['accept', 'accept', 'accept']);
    const stats = await session.built.generation.sandboxFor(session.listener).stats();
    assert.equal(stats.calls, 1, 'only the real script reached an isolate');
  });
});

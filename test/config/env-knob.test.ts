/**
 * The environment variables tests use to shorten a wait (POSTERN_SLOW_HOOK_MS and the like) take a positive
 * whole number only. Each was parsed `Number(x) || default`: POSTERN_SYNC_DEADLINE_MS=-1 made every spool sync's
 * deadline already past (every message refused as not confirmed by the disk), 0.5 a deadline of half a millisecond,
 * and nothing said so. Now such a value is warned about once, on stderr, and the default used.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** What a fresh process with `env` sees as the slow-hook period (read as the module loads), and its stderr. */
function slowHookWith(value: string): { ms: number; stderr: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
    const { SLOW_HOOK_MS } = await import('./engine/sandbox/fast-path-policy.ts');
    const { envKnob } = await import('./engine/config/env-knob.ts').catch(() => ({ envKnob: () => 0 }));
    envKnob('POSTERN_SLOW_HOOK_MS', 1); // read again: not warned again
    process.stdout.write(String(SLOW_HOOK_MS));`], { cwd: ROOT, env: { ...process.env, NODE_NO_WARNINGS: '1', POSTERN_SLOW_HOOK_MS: value }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return { ms: Number(r.stdout), stderr: r.stderr };
}

for (const bad of ['-1', '0.5', '8s', '1e3', '0']) {
  test(`POSTERN_SLOW_HOOK_MS=${bad}: the default 60 s, with one warning`, () => {
    const { ms, stderr } = slowHookWith(bad);
    assert.equal(ms, 60_000);
    assert.equal(stderr.match(/POSTERN_SLOW_HOOK_MS.*not a positive whole number/g)?.length, 1, stderr);
  });
}

test('POSTERN_SLOW_HOOK_MS=8000: taken, nothing said', () => {
  assert.deepEqual(slowHookWith('8000'), { ms: 8000, stderr: '' });
});

// spool.syncDeadlineMs (engine/spool/sync-deadline.ts): was a constant (30 s) only an environment variable could change;
// now a key with a floor that keeps a healthy slow disk's mail flowing, refused at its line when out of range.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../engine/config/load-config.ts';
import { ConfigError } from '../../engine/config/config-error.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, '/etc/postern.yaml', '/etc');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message.split('\n');
  }
  assert.fail('expected a configuration error');
}

test('spool.syncDeadlineMs: 30 s unless set; a value is taken', () => {
  const LISTENER = 'listeners: [{ name: a, listen: "127.0.0.1:25" }]\n';
  assert.equal(parseConfig(LISTENER, '/etc/postern.yaml', '/etc').config.spool.syncDeadlineMs, 30_000);
  assert.equal(parseConfig(`${LISTENER}spool: { syncDeadlineMs: 60000 }\n`, '/etc/postern.yaml', '/etc').config.spool.syncDeadlineMs, 60_000);
});

test('spool.syncDeadlineMs below the floor a healthy slow disk needs, above what a client waits, or not a number: refused at its line, naming the key', () => {
  assert.deepEqual(problems('spool:\n  syncDeadlineMs: 100\n').map((l) => l.replace(/:\d+: /, ': ')),
    ['/etc/postern.yaml:2: spool.syncDeadlineMs: at least 5000 ms: a healthy disk under load takes a second or more for a sync now and then, and a shorter deadline refused its mail']);
  assert.match(problems('spool:\n  syncDeadlineMs: 900000\n')[0]!, /^\/etc\/postern\.yaml:2:\d+: spool\.syncDeadlineMs: at most 300000 ms/);
  assert.match(problems('spool:\n  syncDeadlineMs: 30s\n')[0]!, /^\/etc\/postern\.yaml:2:\d+: spool\.syncDeadlineMs: /);
});

test('postern check refuses a spool.syncDeadlineMs under the floor, naming the key (exit 1)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-cfg-'));
  const file = join(dir, 'postern.yaml');
  writeFileSync(file, `dataDir: ${JSON.stringify(join(dir, 'data'))}\nspool:\n  syncDeadlineMs: 1000\n`);
  const r = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'check', '--config', file], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stdout + r.stderr, /postern\.yaml:3:\d+: spool\.syncDeadlineMs: at least 5000 ms/);
});

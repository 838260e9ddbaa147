// `postern reload` against a real `postern serve` (two workers and the queue process): it signals the server and
// returns once every process has finished the reload, with its outcome: 0 taken, 1 refused with the errors
// (file:line first) on stderr, the same again while the edit stays broken (a second SIGHUP of unchanged content is a
// reload too), 3 once nothing runs. `kill -HUP` said nothing of any of it (systemd's ExecReload was one).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { startCluster } from '../helpers/cluster.ts';

test('postern reload waits for the outcome: 0 when taken, 1 naming file and line when refused, 3 when not running', async () => {
  const c = await startCluster({
    config: `
workers: 2
tables: { senders: ./senders }
listeners:
  - { name: mx, listen: "127.0.0.1:{PORT:mx}", reverseDns: false }
`,
    files: { senders: 'spammer@bad.example REJECT\n' },
  });
  const config = join(c.dir, 'postern.yaml');
  const table = join(c.dir, 'senders');
  let stopped = false;
  try {
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    const taken = await runCli(['reload', '--config', config], { timeoutMs: 150_000 });
    assert.equal(taken.code, 0, taken.stderr);
    assert.match(taken.stdout, /^postern: reloaded \(generation \d+\)\n$/);

    await writeFile(table, 'spammer@bad.example REJECT\nno-value-here\n');
    for (const time of ['first', 'again, unchanged']) {
      const refused = await runCli(['reload', '--config', config], { timeoutMs: 150_000 });
      assert.equal(refused.code, 1, `${time}: ${refused.stdout}${refused.stderr}`);
      assert.equal(refused.stdout, '');
      assert.match(refused.stderr, new RegExp(`^postern: reload refused, the running configuration stays in force:\\n${table}:2: expected "key value", got "no-value-here"`), time);
    }
    await writeFile(table, 'spammer@bad.example REJECT\nfriend@good.example OK\n');
    const fixed = await runCli(['reload', '--config', config], { timeoutMs: 150_000 });
    assert.equal(fixed.code, 0, fixed.stderr);

    await c.stop();
    stopped = true;
    const none = await runCli(['reload', '--config', config]);
    assert.equal(none.code, 3, none.stderr);
    assert.match(none.stderr, /^postern: not running \(no server answers/m); // (its folder is gone too: said first)
  } finally {
    if (!stopped) await c.stop();
  }
});

// A script whose top level counts (rate(), counter()) loads at a start, which has the server's store: `postern
// check` refused it ("rate(): no counter store here") while the server started with it. Check now runs the top
// level with counters in its own memory (the server's store untouched), as `postern replay` does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { startTestServer } from '../helpers/postern.ts';

const COUNTING = `const boot = await rate('boot', 1000, 60);\nif (!boot.allowed) throw new Error('over');\nexport default function () { return; }\n`;

test('a top level that calls rate(): the server starts with it, and postern check accepts it', async () => {
  const s = await startTestServer({ config: 'listeners: [{ name: mx, listen: "127.0.0.1:0" }]\n', scripts: { 'mailfrom.ts': COUNTING } });
  try {
    const check = await runCli(['check', '--config', join(s.dir, 'postern.yaml')]);
    assert.equal(check.stderr, '');
    assert.equal(check.code, 0);
  } finally {
    await s.close();
  }
});

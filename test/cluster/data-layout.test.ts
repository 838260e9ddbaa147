// docs/operations.md's "Data layout" names everything `postern serve` writes in its data directory: a server
// with every writer on (replay recordings, a client certificate seen, a message spooled) leaves nothing else there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { startCluster } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';

test("every entry of a running server's data directory is in docs/operations.md's Data layout", { timeout: 180_000 }, async () => {
  const c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
replay: { keepDays: 1 }
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
`,
    scripts: { 'rcptto.ts': 'export default async function () { return accept(); }\n' },
  });
  let entries: string[];
  try {
    await submitMessage(c.port('in'), 'a@example.org', ['b@example.test']);
    await c.waitFor('a replay recording', async () => (await readdir(c.dataDir)).includes('replay'));
    entries = await readdir(c.dataDir);
  } finally {
    await c.stop();
  }
  const doc = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('## Data layout'), doc.indexOf('\n## ', doc.indexOf('## Data layout') + 1));
  const documented = new Set([...section.matchAll(/^\| ([^|]+) \|/gm)].flatMap((m) => [...m[1]!.matchAll(/`([^`/]+)\/?`/g)].map((x) => x[1]!)));
  assert.ok(documented.has('spool') && documented.has('status.json'), [...documented].join(', '));
  assert.ok(entries.includes('spool'));
  assert.deepEqual(entries.filter((e) => !documented.has(e)), [], 'in the data directory, not in the Data layout table');
});

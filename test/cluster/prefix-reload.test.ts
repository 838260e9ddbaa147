// limits.ipv6PrefixLength edited under `postern serve`: the supervisor counts each connection it hands over by
// the prefix it started with; a worker that took the reloaded one looked for the slot under another key, found
// none and counted every connection as the client's first: maxConnectionsPerIp no longer held until a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ROUND_ROBIN, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

const PROCESSES = ['worker 0', 'worker 1', 'queue 0'];

/**
 * How many of three connections opened one after another from ::1, all kept open, were greeted. (One may be
 * refused for a connection of the round before, closed, whose slot the supervisor has not been told of yet.)
 */
async function greetedOfThree(c: ClusterProcess): Promise<number> {
  const clients: SmtpTestClient[] = [];
  const replies: string[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const client = await SmtpTestClient.connect(c.port('in'), { host: '::1' });
      clients.push(client);
      replies.push((await client.read(30_000)).text);
    }
  } finally {
    for (const client of clients) client.destroy();
  }
  assert.ok(replies.every((r) => r.startsWith('220 ') || r === '421 4.7.0 Too many connections from your address'), replies.join('\n'));
  return replies.filter((r) => r.startsWith('220 ')).length;
}

test('a reload that changes ipv6PrefixLength keeps maxConnectionsPerIp holding, and says a restart applies it', async () => {
  const c = await startCluster({ config: `
workers: 2
${ROUND_ROBIN}localDomains: [example.test]
listeners:
  - name: in
    listen: "[::1]:{PORT:in}"
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2, ipv6PrefixLength: 64 }
` });
  try {
    const before = await c.waitFor('every process started', async () => {
      const r = (await c.cluster()).reload;
      return PROCESSES.every((p) => r.processes[p]) && r;
    });
    assert.ok(await greetedOfThree(c) <= 2);
    const file = join(c.dir, 'postern.yaml');
    await writeFile(file, (await readFile(file, 'utf8')).replace('ipv6PrefixLength: 64', 'ipv6PrefixLength: 128'));
    await c.waitFor('every process on the edit', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && PROCESSES.every((p) => r.processes[p]!.digest !== before.processes[p]!.digest);
    });
    // Connections to both workers (round robin): the limit holds as before.
    for (let i = 0; i < 3; i++) assert.ok(await greetedOfThree(c) <= 2, 'at most maxConnectionsPerIp greeted at once');
    const status = await runCli(['status', '--config', file]);
    assert.deepEqual((JSON.parse(status.stdout) as { pendingRestart: string[] }).pendingRestart, ['listener in changes limits.ipv6PrefixLength 64 → 128']);
  } finally {
    await c.stop();
  }
});

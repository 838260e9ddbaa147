// limits.ipv6PrefixLength edited under `postern serve`: the supervisor counts each connection it hands over by
// the prefix it started with; a worker that took the reloaded one looked for the slot under another key, found
// none and counted every connection as the client's first: maxConnectionsPerIp no longer held until a restart.
// So did a worker started again after the edit (a crash, a hang: it reads the file), and one started again after
// proxyProtocol was turned on waited for a header the supervisor's plain connections never bring.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, workerPid, ROUND_ROBIN, type ClusterProcess } from '../helpers/cluster.ts';
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

/** Worker `index` killed (a crash) and replaced: the replacement reads postern.yaml as it is now. */
async function replaced(c: ClusterProcess, index: number): Promise<void> {
  const pid = await workerPid(c, index);
  process.kill(pid, 'SIGKILL');
  await c.waitFor(`worker ${index} replaced`, async () => {
    const p = (await c.cluster()).processes.find((x) => x.role === 'worker' && x.index === index);
    return p?.ready && p.pid !== null && p.pid !== pid;
  });
}

test('a reload that changes ipv6PrefixLength (or proxyProtocol) keeps maxConnectionsPerIp holding, in workers started again after it too, and says a restart applies it', async () => {
  const c = await startCluster({ config: `
workers: 2
${ROUND_ROBIN}localDomains: [example.test]
listeners:
  - name: in
    listen: "[::1]:{PORT:in}"
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2, ipv6PrefixLength: 64 }
  - name: plain
    listen: 127.0.0.1:{PORT:plain}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
  - name: gone
    listen: 127.0.0.1:{PORT:gone}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
` });
  try {
    const before = await c.waitFor('every process started', async () => {
      const r = (await c.cluster()).reload;
      return PROCESSES.every((p) => r.processes[p]) && r;
    });
    assert.ok(await greetedOfThree(c) <= 2);
    const file = join(c.dir, 'postern.yaml');
    await writeFile(file, (await readFile(file, 'utf8')).replace('ipv6PrefixLength: 64', 'ipv6PrefixLength: 128')
      .replace('limits: { greetingDelayMs: 0 }', 'limits: { greetingDelayMs: 0 }\n    proxyProtocol: { trusted: [127.0.0.0/8], headerTimeoutMs: 2000 }')
      .replace(/  - name: gone[^]*$/, ''));
    await c.waitFor('every process on the edit', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && PROCESSES.every((p) => r.processes[p]!.digest !== before.processes[p]!.digest);
    });
    // Connections to both workers (round robin): the limit holds as before.
    for (let i = 0; i < 3; i++) assert.ok(await greetedOfThree(c) <= 2, 'at most maxConnectionsPerIp greeted at once');
    const pending = ['listener in changes limits.ipv6PrefixLength 64 → 128', 'listener plain changes proxyProtocol', 'listener gone removed'];
    const status = await runCli(['status', '--config', file]);
    assert.deepEqual((JSON.parse(status.stdout) as { pendingRestart: string[] }).pendingRestart, pending);
    // Both workers crash and are started again: they count and read their connections as the supervisor hands them.
    await replaced(c, 0);
    await replaced(c, 1);
    for (let i = 0; i < 3; i++) assert.ok(await greetedOfThree(c) <= 2, 'at most maxConnectionsPerIp greeted at once, by workers started again');
    for (let i = 0; i < 4; i++) { // round robin: both workers' turns
      const client = await SmtpTestClient.connect(c.port('plain'));
      try {
        assert.match((await client.read(30_000)).text, /^220 /, 'a plain client greeted, no PROXY header waited for');
      } finally {
        client.destroy();
      }
      // A listener the reload removed: the port stays bound until the restart, and workers that do not have it
      // at all answer as the others do, not by closing the connection unanswered.
      const toGone = await SmtpTestClient.connect(c.port('gone'));
      try {
        assert.equal((await toGone.read(30_000)).text, '421 4.3.2 Service not available, closing transmission channel');
      } finally {
        toGone.destroy();
      }
    }
    const after = await runCli(['status', '--config', file]);
    assert.deepEqual((JSON.parse(after.stdout) as { pendingRestart: string[] }).pendingRestart, pending, 'still waiting for the restart');
  } finally {
    await c.stop();
  }
});

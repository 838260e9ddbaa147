// A policy service's unix socket removed while the server runs (a cleanup of the folder, a careless `rm`): Postfix's
// check_policy_service found nothing to connect to and applied its default_action to every message for the rest of
// the server's life; a reload (kill -HUP, which Postfix admins reach for) did not bind it again either. The supervisor
// makes it again, with its mode. Something else put in its place is left alone (never deleted) and said.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

let c: ClusterProcess | undefined;
after(() => c?.stop());

async function answers(path: string): Promise<string | null> {
  const client = await PolicyClient.connect({ path }).catch(() => null);
  if (!client) return null;
  try {
    return await client.ask(rcptRequest({ recipient: 'x@example.org' }));
  } finally {
    client.close();
  }
}

test('the policy socket removed while the server runs: made again with its mode, requests answered again', { timeout: 180_000 }, async () => {
  c = await startCluster({
    config: `
workers: 1
localDomains: [example.org]
policyServices:
  - { name: chroot, listen: 'unix:./data/policy.sock', socket: { mode: '0620' } }
`,
  });
  const path = join(c.dataDir, 'policy.sock');
  assert.equal(await answers(path), 'action=DUNNO');
  await rm(path);
  assert.equal(await answers(path), null);
  await c.waitFor('the policy socket made again', async () => (await answers(path)) === 'action=DUNNO', 90_000);
  assert.equal((await stat(path)).mode & 0o777, 0o620);
  // Said by the supervisor, whose stdout the test reads apart from the socket: the line may come a moment after.
  await c.waitFor('logged', () => c!.logs.some((l) => /policy service: its socket file was removed .*made again/.test(String(l.msg))));
});

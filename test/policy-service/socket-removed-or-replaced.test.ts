// A policy service's unix socket removed while the server runs (a cleanup of the folder, a careless `rm`): Postfix's
// check_policy_service found nothing to connect to and applied its default_action to every message for the rest of
// the server's life; a reload (kill -HUP, which Postfix admins reach for) did not bind it again either. The supervisor
// makes it again, with its mode. Something else put in its place is left alone (never deleted) and said.
//
// Replaced while the server runs by something that is not ours: another process's socket (a second policy daemon moved
// onto the path) or a file renamed over it. The supervisor leaves it alone while it runs; its stop must leave it alone
// too. Closing a unix socket's server unlinks the path it was bound at, whatever is there by then: the stop deleted the
// other process's socket and the file.
//
// One server for both tests, a service each: the first leaves it serving, the second stops it.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { lstat, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

let c: ClusterProcess | undefined;
let foreign: net.Server | undefined;
after(async () => { foreign?.close(); await c?.stop(); });

const server = async (): Promise<ClusterProcess> => c ?? (c = await startCluster({
  config: `
workers: 1
localDomains: [example.org]
policyServices:
  - { name: chroot, listen: 'unix:./data/policy.sock', socket: { mode: '0620' } }
  - { name: taken, listen: 'unix:./data/taken.sock' }
  - { name: filed, listen: 'unix:./data/filed.sock' }
`,
}));

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
  c = await server();
  const path = join(c.dataDir, 'policy.sock');
  assert.equal(await answers(path), 'action=DUNNO');
  await rm(path);
  assert.equal(await answers(path), null);
  await c.waitFor('the policy socket made again', async () => (await answers(path)) === 'action=DUNNO', 90_000);
  assert.equal((await stat(path)).mode & 0o777, 0o620);
  // Said by the supervisor, whose stdout the test reads apart from the socket: the line may come a moment after.
  await c.waitFor('logged', () => c!.logs.some((l) => /policy service: its socket file was removed .*made again/.test(String(l.msg))));
});

test('a policy socket replaced by another process\'s socket or a file: the stop deletes neither', { timeout: 180_000 }, async () => {
  c = await server();
  const taken = join(c.dataDir, 'taken.sock');
  const filed = join(c.dataDir, 'filed.sock');
  await c.waitFor('both policy sockets', async () => (await lstat(taken).catch(() => null))?.isSocket() && (await lstat(filed).catch(() => null))?.isSocket());
  // Put in place by rename: no moment with the path empty, in which the supervisor would bind its own again.
  foreign = net.createServer((s) => s.end('foreign\n'));
  const foreignTmp = join(c.dataDir, 'foreign.tmp');
  foreign.listen(foreignTmp);
  await once(foreign, 'listening');
  await rename(foreignTmp, taken);
  await writeFile(join(c.dataDir, 'filed.tmp'), 'not a socket\n');
  await rename(join(c.dataDir, 'filed.tmp'), filed);
  for (const name of ['taken', 'filed']) {
    await c.waitFor(`the replaced ${name} socket said`, () => c!.logs.some((l) => l.policyService === name && /replaced .* left alone/.test(String(l.msg))), 60_000);
  }
  c.proc.kill('SIGTERM');
  await once(c.proc, 'exit');
  assert.ok((await lstat(taken).catch(() => null))?.isSocket(), 'the other process\'s socket is still at its path');
  const answer = await new Promise<string>((resolve, reject) => {
    const s = net.connect(taken);
    let got = '';
    s.on('data', (d) => { got += d.toString(); });
    s.on('end', () => resolve(got));
    s.on('error', reject);
  });
  assert.equal(answer, 'foreign\n');
  assert.equal(await readFile(filed, 'utf8'), 'not a socket\n', 'the file put in its place is still there');
  await rm(filed);
});

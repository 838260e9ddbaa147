// Policy services under `postern serve`, with no SMTP listener at all: the supervisor owns the TCP and unix sockets and hands the
// connections to the workers; a script edit is picked up by the next request (hot reload); `postern status`
// lists the services; a worker killed mid-connection is replaced and new connections are served.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { PolicyClient, rcptRequest, requestText } from './helpers/policy-client.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
let c: ClusterProcess;

before(async () => {
  c = await startCluster({
    config: `
workers: 2
localDomains: [example.org]
policyServices:
  - { name: postfix, listen: '127.0.0.1:{PORT:policy}' }
  - { name: chroot, listen: 'unix:./data/policy.sock', authoritative: true }
`,
    scripts: { 'rcptto.ts': `export default (ctx) => ctx.builtin.accepted ? accept() : reject('first version: ' + ctx.connection.source);` },
  });
});
after(() => c?.stop());

test('requests over TCP and the unix socket are answered by the workers', async () => {
  const clients = await Promise.all(Array.from({ length: 8 }, () => PolicyClient.connect({ port: c.port('policy') })));
  for (const [i, client] of clients.entries()) {
    assert.equal(await client.ask(rcptRequest({ client_port: 1000 + i })), 'action=550 5.7.1 first version: postfix-policy');
    assert.equal(await client.ask(rcptRequest({ recipient: 'x@example.org' })), 'action=DUNNO');
  }
  for (const client of clients) client.close();
  const u = await PolicyClient.connect({ path: join(c.dataDir, 'policy.sock') });
  assert.equal(await u.ask(rcptRequest({ recipient: 'x@example.org' })), 'action=OK');
  u.close();
  // Which processes answered: the connection ids name the worker's pid.
  const pids = new Set(c.logs.filter((l) => l.msg === 'policy answer').map((l) => l.pid));
  assert.ok(pids.size >= 1 && !pids.has(c.proc.pid), 'answered in worker processes, not the supervisor');
});

test('a client that half-closes after its requests gets every answer from the worker', async () => {
  const client = await PolicyClient.connect({ port: c.port('policy') });
  let text = '';
  client.socket.on('data', (chunk: string) => { text += chunk; });
  const recipients = ['x@example.org', 'y@elsewhere.example', 'z@example.org'];
  client.socket.end(recipients.map((r) => requestText(rcptRequest({ recipient: r }))).join(''));
  await client.closed;
  assert.equal(text, ['action=DUNNO', 'action=550 5.7.1 first version: postfix-policy', 'action=DUNNO'].map((a) => `${a}\n\n`).join(''));
});

test('a script edit applies to the next request on an open connection', async () => {
  const client = await PolicyClient.connect({ port: c.port('policy') });
  assert.equal(await client.ask(rcptRequest()), 'action=550 5.7.1 first version: postfix-policy');
  await writeFile(join(c.dir, 'scripts', 'rcptto.ts'), `export default () => reject('second version', { code: 554 });`);
  await c.waitFor('the new script', async () => (await client.ask(rcptRequest())) === 'action=554 5.7.1 second version');
  client.close();
});

test('postern status lists the policy services', () => {
  const r = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')], { encoding: 'utf8', timeout: 60_000 });
  const status = JSON.parse(r.stdout) as { cluster: { policyServices: Record<string, string> } };
  assert.deepEqual(status.cluster.policyServices, { postfix: `127.0.0.1:${c.port('policy')}`, chroot: `unix:${join(c.dataDir, 'policy.sock')}` });
});

test('a worker that dies is replaced; new connections are served', async () => {
  const pid = await workerPid(c, 0);
  process.kill(pid, 'SIGKILL');
  await c.waitFor('worker 0 replaced', async () => {
    const p = (await c.cluster()).processes.find((x) => x.role === 'worker' && x.index === 0);
    return p?.ready && p.pid !== pid;
  });
  for (let i = 0; i < 4; i++) {
    const client = await PolicyClient.connect({ port: c.port('policy') });
    assert.equal(await client.ask(rcptRequest()), 'action=554 5.7.1 second version');
    client.close();
  }
});

test('limits.maxConnections holds for the whole server, not per worker: over it an idle connection is closed for the new one', async () => {
  // The same server (a start of its own cost two workers more), the limit set by a reload: every worker takes it.
  const config = join(c.dir, 'postern.yaml');
  const mark = c.logs.length;
  await writeFile(config, (await readFile(config, 'utf8')).replace(/listen: '127\.0\.0\.1:(\d+)' \}/, "listen: '127.0.0.1:$1', limits: { maxConnections: 3 } }"));
  const workers = (await c.cluster()).processes.filter((p) => p.role === 'worker').map((p) => p.pid);
  await c.waitFor('every worker reloaded', () => workers.every((pid) => c.logs.slice(mark).some((l) => l.msg === 'reloaded' && l.pid === pid)));
  const answer = 'action=554 5.7.1 second version'; // the script of the edit above
  const port = c.port('policy');
  // Three connections, each answered: handed to the two workers in turn (2 + 1), each counted.
  const open = await Promise.all(Array.from({ length: 3 }, () => PolicyClient.connect({ port })));
  for (const client of open) assert.equal(await client.ask(rcptRequest({ recipient: 'x@example.org' })), answer);
  // The fourth is over the limit whichever worker gets it (per worker, neither would be at 3): it is answered,
  // and the idle connection of that worker that has gone longest without progress is closed for it.
  let closedOnes = 0;
  for (const client of open) void client.closed.then(() => closedOnes++);
  const fourth = await PolicyClient.connect({ port });
  fourth.send(requestText(rcptRequest({ recipient: 'x@example.org' })));
  assert.equal(await Promise.race([fourth.closed.then(() => 'closed'), fourth.next()]), answer);
  await c.waitFor('one of the three closed for it', () => closedOnes === 1);
  await c.waitFor('logged', () => c.logs.some((l) => l.msg === 'policy service: too many connections, the one idle longest closed for each new one'));
  open.push(fourth);
  for (const client of open) client.close();
});

/**
 * SIGTERM stops `postern serve` after it served STARTTLS sessions: a supervisor that waited for its
 * listening sockets to report every handed-over connection closed waited for ever (the plain socket under
 * a TLS session never reports), so a service manager's stop left the server running.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startCluster } from '../helpers/cluster.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

test('SIGTERM stops the supervisor and its workers after STARTTLS sessions, open and closed', async () => {
  const pki = await makeTestPki();
  const cluster = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
`,
  });
  const pids = (await cluster.waitFor('two ready workers', async () => {
    const ready = (await cluster.cluster()).processes.filter((p) => p.ready && p.pid);
    return ready.length >= 3 ? ready : null; // two workers and the queue process
  })).map((p) => p.pid!);
  const ca = await readFile(pki.ca.cert, 'utf8');
  const tlsSession = async (): Promise<SmtpTestClient> => {
    const c = await SmtpTestClient.connect(cluster.port('in'));
    await c.hello({ starttls: { ca, servername: 'localhost' } });
    assert.equal((await c.sendMail('a@example.org', ['b@example.test'])).code, 250);
    return c;
  };
  for (let i = 0; i < 4; i++) await (await tlsSession()).quit(); // both workers served and closed some
  const open = await tlsSession(); // and one is still open

  const exited = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
  cluster.proc.kill('SIGTERM');
  assert.equal(await exited, 0, 'the supervisor exits, cleanly');
  assert.ok(await open.waitClosed(), 'the open session was ended');
  for (const pid of pids) assert.throws(() => process.kill(pid, 0), 'no child is left running');
  await cluster.stop();
});

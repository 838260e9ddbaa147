// `postern serve` stops on SIGTERM after STARTTLS sessions. smtp-server's STARTTLS strips the raw socket's
// listeners, among them the one by which a worker tells the supervisor's net.Server that a handed-over socket
// closed; a supervisor that waited for its listeners to drain before stopping its workers waited forever.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { startCluster, type ClusterProcess } from './helpers.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';

let c: ClusterProcess | undefined;
after(() => c?.stop());

test('SIGTERM after a STARTTLS session: the supervisor and its children exit', async () => {
  const pki = await makeTestPki();
  c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
listeners:
  - name: mx
    listen: "127.0.0.1:{PORT:mx}"
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0 }
`,
  });
  const client = await SmtpTestClient.connect(c.port('mx'));
  await client.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8') } });
  assert.equal((await client.sendMail('a@example.net', ['b@example.test'])).code, 250);
  await client.quit();
  const exited = once(c.proc, 'exit');
  c.proc.kill('SIGTERM');
  const [code] = await exited; // hang guard: the test runner's timeout
  assert.equal(code, 0);
});

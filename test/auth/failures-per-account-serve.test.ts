// limits.authFailuresPerAccount under `postern serve` with two workers: guesses at one account sent at the same
// moment from many addresses, spread over both workers (roundRobin), are held to the limit exactly (the workers count
// in the supervisor's store). A real `postern serve`, real TLS clients from distinct loopback addresses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startCluster, freePort, ROUND_ROBIN } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, plain } from './helpers/submission.ts';

const DEFERRED = '454 4.7.0 Temporary authentication failure, try again later';

test('postern serve, two workers: 20 guesses at once at a limit of 5: 5 decided, 15 deferred', { timeout: 120_000 }, async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const port = await freePort();
  const c = await startCluster({
    config: `workers: 2\n${ROUND_ROBIN}localDomains: [example.com]\nusers: ./users
listeners:
  - name: sub
    listen: 127.0.0.1:${port}
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN] }
    limits: { authFailuresPerIp: 3, authFailuresPerAccount: 5, authFailuresBeforeDelay: 100, greetingDelayMs: 0 }
`,
    files: { users: `alice@example.com:${await hashPassword('alice-Secret-1')}\n` },
  });
  const clients: SmtpTestClient[] = [];
  try {
    await c.waitFor('both workers ready', async () => (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length === 2);
    for (let i = 1; i <= 20; i++) {
      const client = await SmtpTestClient.connect(port, { localAddress: `127.0.8.${i}` });
      await client.hello({ starttls: { ca } });
      clients.push(client);
    }
    const replies = await Promise.all(clients.map((client, i) => client.command(plain('alice@example.com', `guess-${i}`)).then((r) => r.text)));
    assert.equal(replies.filter((r) => r === INVALID).length, 5, replies.join(' | '));
    assert.equal(replies.filter((r) => r === DEFERRED).length, 15);
  } finally {
    for (const client of clients) client.destroy();
    await c.stop();
  }
});

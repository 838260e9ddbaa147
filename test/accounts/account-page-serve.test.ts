// The account page under `postern serve`: it runs in the queue process (one per server, restarted by the
// supervisor like any child), and its failed sign-ins and the workers' failed SMTP AUTHs are one count,
// relayed through the supervisor both ways.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { needs } from '../helpers/example.ts';
import { webSignIn } from './helpers.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { startCluster, workerPid } from '../helpers/cluster.ts';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

test('under postern serve the page runs in the queue process and shares the auth-failure count with the workers', needs('curl'), async () => {
  const pki = await makeTestPki();
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
users: ./users
accounts: { listen: 127.0.0.1:{PORT:accounts}, listener: submission }
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 4, authFailuresBeforeDelay: 10 }
  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, cert: ${JSON.stringify(pki.server.cert)}, key: ${JSON.stringify(pki.server.key)} }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 4, authFailuresBeforeDelay: 10 }
`,
    files: { users: `alice@example.com:${await hashPassword('right')}\n` },
  });
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    const queuePid = await c.waitFor('the queue process', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.ready)?.pid);
    const listening = await c.waitFor('the account page', () => c.logs.find((l) => l.msg === 'account page listening (HTTPS)'));
    assert.equal(listening.pid, queuePid, 'the queue process serves the page');
    const url = `https://127.0.0.1:${c.port('accounts')}`;
    const jar = join(c.dir, 'cookies');

    // Three failed SMTP AUTHs, on the workers in turn.
    for (let i = 0; i < 3; i++) {
      const client = await SmtpTestClient.connect(c.port('sub'));
      try {
        assert.equal((await client.read(30_000)).code, 220);
        await client.command('EHLO client.test', 30_000);
        assert.equal((await client.command(`AUTH PLAIN ${b64('\0alice@example.com\0wrong')}`, 30_000)).code, 535);
      } finally {
        client.destroy();
      }
    }
    // One wrong password on the page: the fourth failure of this address.
    assert.equal(await webSignIn(url, jar, 'alice@example.com', 'wrong'), '401');
    // The page has heard of the workers' three: even the right password is refused now.
    await c.waitFor('the page to refuse the address', async () => (await webSignIn(url, jar, 'alice@example.com', 'right')) === '429');
    // And the workers have heard of the page's one: SMTP is refused at connect.
    await c.waitFor('SMTP to refuse the address', async () => {
      const client = await SmtpTestClient.connect(c.port('sub'));
      try {
        return /^421 4\.7\.0 Too many authentication failures/.test((await client.read(30_000)).text);
      } finally {
        client.destroy();
      }
    });
  } finally {
    await c.stop();
  }
});

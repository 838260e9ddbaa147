/**
 * Under `postern serve` a connection's per-IP slot goes back when its session ends, STARTTLS included.
 * smtp-server's STARTTLS removes every listener of the plain socket, the worker's close listener that gave
 * the slot back to the supervisor among them: each STARTTLS session kept its slot for ever, and after
 * `maxConnectionsPerIp` sessions (in total, not at once) the server refused that address until the worker
 * was replaced (found by the serve benchmark at one message per connection).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startCluster } from '../helpers/cluster.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

test('STARTTLS sessions one after another never use up maxConnectionsPerIp', async () => {
  const pki = await makeTestPki();
  const cluster = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
`,
  });
  try {
    const ca = await readFile(pki.ca.cert, 'utf8');
    // Six sessions, at most one open at a time: each must be greeted with 220 (a leaked slot gives 421).
    for (let i = 0; i < 6; i++) {
      // The slot of the session before goes back asynchronously (worker → supervisor): wait for it.
      const c = await cluster.waitFor(`session ${i + 1} greeted`, async () => {
        const client = await SmtpTestClient.connect(cluster.port('in'));
        const greeting = await client.read(30_000);
        if (greeting.code === 220) return client;
        assert.match(greeting.text, /^421 4\.7\.0 Too many connections/);
        client.destroy();
        return null;
      });
      assert.equal((await c.command('EHLO client.example')).code, 250);
      await c.starttls({ ca, servername: 'localhost' });
      assert.equal((await c.command('EHLO client.example')).code, 250);
      assert.equal((await c.sendMail('a@example.org', ['b@example.test'])).code, 250);
      await c.quit();
    }
    // Slots of open STARTTLS sessions are still held: two open, the third is refused.
    const open: SmtpTestClient[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await cluster.waitFor(`open session ${i + 1} greeted`, async () => {
        const client = await SmtpTestClient.connect(cluster.port('in'));
        if ((await client.read(30_000)).code === 220) return client;
        client.destroy();
        return null;
      });
      await c.command('EHLO client.example');
      await c.starttls({ ca, servername: 'localhost' });
      assert.equal((await c.command('EHLO client.example')).code, 250);
      open.push(c);
    }
    const third = await SmtpTestClient.connect(cluster.port('in'));
    assert.match((await third.read(30_000)).text, /^421 4\.7\.0 Too many connections/);
    third.destroy();
    for (const c of open) await c.quit();
  } finally {
    await cluster.stop();
  }
});

// Under `postern serve`, a client dripping its command a byte at a time is cut by whichever worker has it
// (limits.socketTimeoutMs bounds each line, see test/smtp/slow-clients.test.ts), and its per-IP slot, counted
// by the supervisor over every worker, comes back: drippers cannot hold an address's (or the listener's) slots.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCluster, ROUND_ROBIN } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

test('drippers on both workers are cut at socketTimeoutMs and their per-IP slots come back', async () => {
  const cluster = await startCluster({
    config: `${ROUND_ROBIN}
workers: 2
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2, socketTimeoutMs: 1500, maxJunkCommands: 100000 }
`,
  });
  try {
    const greeted = (what: string): Promise<SmtpTestClient> => cluster.waitFor(what, async () => {
      const client = await SmtpTestClient.connect(cluster.port('in'));
      const greeting = await client.read(30_000);
      if (greeting.code === 220) return client;
      assert.match(greeting.text, /^421 4\.7\.0 Too many connections/);
      client.destroy();
      return null;
    }, 60_000);
    // Until the third is refused, each dripper keeps its session with whole commands (NOOPs, not counted as junk
    // here), each of which starts the listener's 1.5 s anew: on a loaded machine the steps from the first greeting
    // to the third's reply took longer, the first dripper was cut meanwhile, and the third was greeted in its slot.
    const keepingAlive: Array<Promise<void>> = [];
    let keepAlive = true;
    const kept = (client: SmtpTestClient): SmtpTestClient => {
      keepingAlive.push((async () => {
        while (keepAlive) {
          assert.equal((await client.command('NOOP', 30_000)).code, 250);
          await sleep(100);
        }
      })());
      return client;
    };
    let drippers: SmtpTestClient[];
    try {
      drippers = [kept(await greeted('dripper 1 greeted')), kept(await greeted('dripper 2 greeted'))];
      // Both slots are taken now: a third is refused.
      const third = await SmtpTestClient.connect(cluster.port('in'));
      assert.match((await third.read(30_000)).text, /^421 4\.7\.0 Too many connections/);
      third.destroy();
    } finally {
      keepAlive = false;
      await Promise.all(keepingAlive);
    }
    // A byte every 200 ms, far within the idle timeout, until each is closed (a minute's hang guard).
    const deadline = Date.now() + 60_000;
    for (let i = 0; drippers.some((c) => !c.closed) && Date.now() < deadline; i++) {
      for (const c of drippers) if (!c.closed) c.socket.write('NOOP'[i % 4]!);
      await sleep(200);
    }
    for (const c of drippers) {
      assert.ok(c.closed, 'the dripper was cut');
      assert.equal((await c.read()).text, '421 4.4.2 Timeout - closing connection');
    }
    // Their slots are back: two new sessions are greeted and served.
    for (const i of [1, 2]) {
      const c = await greeted(`session ${i} after the drippers greeted`);
      assert.equal((await c.command('EHLO client.example')).code, 250);
      assert.equal((await c.sendMail('a@example.org', ['b@example.test'])).code, 250);
      await c.quit();
    }
  } finally {
    await cluster.stop();
  }
});

// Under postern serve a listener held full by distinct addresses, one connection each, on both workers (round
// robin), idle after EHLO or sending NOOPs in a loop, lets newcomers in: the worker a newcomer lands on closes
// its own connection idle longest (junk commands are no activity) once idle limits.idleWhenFullMs, the listener
// being full over every worker (the supervisor's count). Before, every newcomer read `421 4.7.0 Too many
// connected clients` for as long as the holders liked: maxJunkCommands (100 by default) let a NOOP every 290 s
// hold a slot for some eight hours.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, workerOf, workerPid } from '../helpers/cluster.ts';

test('postern serve: newcomers to a listener held full by idle connections on both workers are greeted', async () => {
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
localDomains: [example.com]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 4, maxConnectionsPerIp: 1, idleWhenFullMs: 300 }
`,
  });
  const open: SmtpTestClient[] = [];
  let nooping = true;
  let loop: Promise<void> = Promise.resolve();
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    let probe = 0; // fresh addresses each time: the supervisor may still count the last pair (maxConnectionsPerIp 1)
    await c.waitFor('connections handed to both workers in turn', async () => {
      const pair = [await SmtpTestClient.connect(c.port('in'), { localAddress: `127.0.1.${++probe}` })];
      pair.push(await SmtpTestClient.connect(c.port('in'), { localAddress: `127.0.1.${++probe}` }));
      for (const p of pair) assert.equal((await p.read(30_000)).code, 220);
      const workers = new Set([await workerOf(c, pair[0]!), await workerOf(c, pair[1]!)]);
      for (const p of pair) await p.quit();
      return workers.size === 2;
    });
    const holders: SmtpTestClient[] = [];
    const workers = new Set<number>();
    for (const ip of ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']) {
      const h = await SmtpTestClient.connect(c.port('in'), { localAddress: ip });
      open.push(h);
      holders.push(h);
      assert.equal((await h.read(30_000)).code, 220, h.transcript.join('\n'));
      workers.add(await workerOf(c, h));
      assert.equal((await h.command('EHLO holder.example', 30_000)).code, 250, h.transcript.join('\n'));
    }
    assert.equal(workers.size, 2, 'the holders on both workers');
    // Two of them look busy with NOOPs; none ever sends MAIL FROM.
    const nooping2 = [holders[1]!, holders[3]!];
    loop = (async () => {
      while (nooping) {
        for (const h of nooping2) if (!h.closed) h.socket.write('NOOP\r\n');
        await sleep(50);
      }
    })();
    await sleep(450); // past idleWhenFullMs since each EHLO was answered

    for (const ip of ['127.0.0.6', '127.0.0.7']) {
      const newcomer = await SmtpTestClient.connect(c.port('in'), { localAddress: ip });
      open.push(newcomer);
      assert.equal((await newcomer.read(30_000)).code, 220, newcomer.transcript.join('\n'));
      assert.equal((await newcomer.command('EHLO newcomer.example', 30_000)).code, 250);
      assert.equal((await newcomer.command('MAIL FROM:<a@sender.example>', 30_000)).code, 250);
    }
    await c.waitFor('two holders closed', () => holders.filter((h) => h.closed).length === 2);
    for (const h of holders.filter((x) => x.closed && !nooping2.includes(x))) {
      assert.match((await h.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, this connection idle for [\d.]+ s is closed for another client$/);
    }
  } finally {
    nooping = false;
    await loop;
    for (const o of open) o.destroy();
    await c.stop();
  }
});

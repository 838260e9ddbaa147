// Under postern serve a listener held full by messages sent at a drip, spread over both workers (round robin),
// lets newcomers in: the worker a newcomer lands on closes the slowest transfer below limits.minDataRate among its
// own connections, the listener being full over every worker (the supervisor's count). Before, every newcomer read
// `421 4.7.0 Too many connected clients` for as long as the drips went on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, workerOf, workerPid } from '../helpers/cluster.ts';

test('postern serve: newcomers to a listener held full by dripping transfers on both workers are greeted', async () => {
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
localDomains: [example.com]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 4, maxConnectionsPerIp: 2, minDataRate: 20000, dataRateWindowMs: 1000 }
`,
  });
  const open: SmtpTestClient[] = [];
  let dripping = true;
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    await c.waitFor('connections handed to both workers in turn', async () => {
      const pair = [await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.9' }), await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.9' })];
      for (const p of pair) assert.equal((await p.read(30_000)).code, 220);
      const workers = new Set([await workerOf(c, pair[0]!), await workerOf(c, pair[1]!)]);
      for (const p of pair) await p.quit();
      return workers.size === 2;
    });
    const drippers: SmtpTestClient[] = [];
    const workers = new Set<number>();
    for (const ip of ['127.0.0.2', '127.0.0.3', '127.0.0.2', '127.0.0.3']) {
      const d = await SmtpTestClient.connect(c.port('in'), { localAddress: ip });
      open.push(d);
      drippers.push(d);
      assert.equal((await d.read(30_000)).code, 220);
      workers.add(await workerOf(c, d));
      for (const [line, code] of [['EHLO drip.example', 250], ['MAIL FROM:<a@sender.example>', 250], ['RCPT TO:<b@example.com>', 250], ['DATA', 354]] as const) {
        assert.equal((await d.command(line, 30_000)).code, code, d.transcript.join('\n'));
      }
    }
    assert.equal(workers.size, 2, 'the drips on both workers');
    const loop = (async () => {
      while (dripping) {
        for (const d of drippers) if (!d.closed) d.socket.write('a line\r\n');
        await sleep(100);
      }
    })();
    await sleep(1500); // past the window since every 354

    for (const ip of ['127.0.0.4', '127.0.0.5']) {
      const newcomer = await SmtpTestClient.connect(c.port('in'), { localAddress: ip });
      open.push(newcomer);
      assert.equal((await newcomer.read(30_000)).code, 220, newcomer.transcript.join('\n'));
    }
    await c.waitFor('two drippers closed', () => drippers.filter((d) => d.closed).length === 2);
    for (const d of drippers.filter((x) => x.closed)) assert.match((await d.read()).text, /^421 4\.4\.2 \S+ Message arriving too slowly while the server is full/);
    dripping = false;
    await loop;
  } finally {
    dripping = false;
    for (const o of open) o.destroy();
    await c.stop();
  }
});

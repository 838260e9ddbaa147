// A full listener closes a connection of the address holding the most for a client of an address holding at least
// two fewer. Under postern serve each worker closes among its own connections, but whether the newcomer holds fewer
// must be counted over every worker: judged by what its own worker held of it, a client holding as many as anyone
// (all on the other worker) closed another client's connection, and that client, reconnecting, closed one of its.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, workerOf, workerPid } from '../helpers/cluster.ts';

test('a client holding as many connections as another, on the other worker, closes none of that one\'s', async () => {
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 6, maxConnectionsPerIp: 5 }
`,
  });
  const open: SmtpTestClient[] = [];
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    // Both workers taking connections (round robin skips one whose first heartbeats are not in yet).
    await c.waitFor('connections handed to both workers in turn', async () => {
      const pair = [await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.9' }), await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.9' })];
      for (const p of pair) assert.equal((await p.read(30_000)).code, 220);
      const workers = new Set([await workerOf(c, pair[0]!), await workerOf(c, pair[1]!)]);
      for (const p of pair) await p.quit();
      return workers.size === 2;
    });
    // Round robin: 127.0.0.2's three connections on one worker, 127.0.0.3's three on the other. Round robin skips a
    // worker whose heartbeat is late (a loaded machine descheduled it 300 ms): then the six are let go and placed
    // again, at most three times.
    let w2: number[] = [];
    let w3: number[] = [];
    for (let attempt = 1; ; attempt++) {
      const placed = new Map<string, Set<number>>([['127.0.0.2', new Set()], ['127.0.0.3', new Set()]]);
      for (let i = 0; i < 6; i++) {
        const ip = i % 2 === 0 ? '127.0.0.2' : '127.0.0.3';
        const client = await SmtpTestClient.connect(c.port('in'), { localAddress: ip });
        open.push(client);
        assert.equal((await client.read(30_000)).code, 220);
        assert.equal((await client.command('EHLO holder.example', 30_000)).code, 250);
        placed.get(ip)!.add(await workerOf(c, client));
      }
      [w2, w3] = [[...placed.get('127.0.0.2')!], [...placed.get('127.0.0.3')!]];
      if (w2.length === 1 && w3.length === 1 && w2[0] !== w3[0]) break;
      assert.ok(attempt < 3, `each address on a worker of its own in one of three tries: ${JSON.stringify([w2, w3])}`);
      for (const o of open.splice(0)) await o.quit();
    }

    // 127.0.0.3's fourth goes to the worker holding 127.0.0.2's three and none of its own: it holds as many.
    const fourth = await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.3' });
    open.push(fourth);
    const answer = await fourth.read(30_000);
    assert.equal(await workerOf(c, fourth).catch(() => w2[0]), w2[0], 'round robin: on the other worker');
    assert.match(answer.text, /^421 4\.7\.0 \S+ Too many connected clients, try again/, fourth.transcript.join('\n'));
    assert.equal(open.slice(0, 6).filter((o) => o.closed).length, 0, 'nobody closed for it');
  } finally {
    for (const o of open) o.destroy();
    await c.stop();
  }
});

// delivery.concurrency and perDestinationConcurrency are live on reload, and a limit raised by one lets in the
// transactions waiting for a slot at once. The limiters read their limit when a slot was asked for or given back: with
// every slot held by a next hop that reads slowly (a tarpit holds one for half an hour), raising the limit let in
// nothing until one of them ended.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';
import { until } from '../helpers/wait.ts';

for (const key of ['concurrency', 'perDestinationConcurrency'] as const) {
  test(`delivery.${key} raised by a reload lets in the transactions waiting for a slot at once`, { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), `postern-${key}-reload-`));
    const dataDir = join(dir, 'data');
    // The next hop does not answer EHLO: each transaction that got a slot holds it.
    const held: net.Socket[] = [];
    const peer = await startScriptedPeer({ ehlo: (s) => { held.push(s); return 'stop'; } });
    let s: DeliveryServer | null = null;
    try {
      const spool = new Spool(join(dataDir, 'spool'));
      await spool.init();
      await spoolMessages(spool, ['a@next.test', 'b@next.test']);
      spool.close();
      const config = (limit: number): string => configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600],
          concurrency: 10, perDestinationConcurrency: 10, [key]: limit },
      });
      s = await startDeliveryServer({
        dataDir, config: config(1),
        resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
      });
      const server = s;
      await until('one transaction at the next hop, the other attempt under way (waiting for a slot)', () => held.length === 1 && server.queue!.activeCount === 2, { timeoutMs: 60_000 });

      await writeFile(join(s.dir, 'postern.yaml'), config(2));
      assert.equal((await s.reloader.reload('test')).ok, true);
      await until('both at the next hop, the first still held there', () => held.length === 2, { timeoutMs: 60_000 });
    } finally {
      await s?.stop();
      peer.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
}

// `postern queue retry ID` writes a due request beside the message; the queue runner used to remove it at the scan
// that scheduled the attempt. A queue process stopped or killed before that attempt was made (every delivery slot
// busy, say) then forgot the request: the message waited for its recorded retry time, an hour here. The request now
// stays on disk until the attempt it asked for has ended.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { retryMessages } from '../../engine/queue/admin.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';
import { until } from '../helpers/wait.ts';

test('a retry request stays until its attempt has been made: a stop before it does not lose it', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-retry-kept-'));
  const dataDir = join(dir, 'data');
  // While `blocking`, the next hop never answers EHLO: the one delivery slot stays busy.
  let blocking = true;
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ ehlo: (s) => { if (!blocking) return; held.push(s); return 'stop'; } });
  const start = (): Promise<DeliveryServer> => startDeliveryServer({
    dataDir,
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 1 },
    }),
    resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
  });
  let s: DeliveryServer | null = null;
  try {
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    await spoolMessages(spool, ['first@next.test']); // due now: takes the slot
    const [retried] = await spoolMessages(spool, ['second@next.test'], { deferredUntil: new Date(Date.now() + 3600_000) });
    spool.close();

    s = await start();
    await until('the first message holds the delivery slot', () => held.length === 1, { timeoutMs: 60_000 });
    await retryMessages(s.spools, [retried!]);
    await s.scans(1, 60_000); // the request is taken: the message is due now, and waits for the slot
    assert.ok(!s.attempts.some((e) => e.id === retried), 'not attempted yet: the slot is busy');
    assert.notEqual(await s.spools.readDueRequest(retried!), null, 'the request is still on disk');
    await s.stop();
    s = null;

    blocking = false;
    for (const socket of held) socket.destroy();
    s = await start();
    const e = await s.nextAttempt((x) => x.id === retried, { timeoutMs: 60_000, past: true });
    assert.equal(e.removed, true, 'delivered at the next start, not an hour later');
    await until('the request removed with its attempt made', async () => (await s!.spools.readDueRequest(retried!)) === null);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

// A message to two destinations is one attempt with a transaction each. Its outcome was written only once every
// transaction had ended: a next hop that takes its time (a tarpit answering each reply just in time holds a
// transaction for half an hour) kept the other destination's delivery unrecorded all that while, and a crash then
// (kill -9, the OOM killer, a power cut) sent it to that destination again at the restart. Postfix records each
// delivery as its agent finishes it. So does Postern now: a transaction that delivered while others of its attempt
// still run writes that progress at once, and the restart sends only to the recipients still pending.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, freePort, type ClusterProcess } from '../helpers/cluster.ts';
import { startSink } from '../helpers/sink.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet } from '../../engine/cluster/spool-set.ts';

function config(sinkPort: number): string {
  return `
workers: 1
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${sinkPort} } }
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [0.2]
`;
}

async function killGroup(c: ClusterProcess): Promise<void> {
  const exited = new Promise<void>((resolve) => {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) resolve();
    else c.proc.once('exit', () => resolve());
  });
  process.kill(-c.proc.pid!, 'SIGKILL'); // the supervisor, its workers and the queue process at once
  await exited;
}

test('kill -9 while one destination of a message still holds its transaction: the restart does not send to the destination that took it', { timeout: 120_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'postern-partial-'));
  const sink = await startSink();
  // The slow destination: the first message's verdict never comes (the server dies waiting); later ones get 250.
  const heldPort = await freePort();
  const held: net.Socket[] = [];
  let heldMessages = 0;
  const peer = await startScriptedPeer({
    endOfData: (s) => {
      heldMessages++;
      if (heldMessages > 1) return;
      held.push(s);
      return 'answered';
    },
  }, '127.0.0.6', heldPort);
  const scripts = {
    'rcptto.ts': 'export default () => accept();',
    'predelivery.ts': `export default (ctx) => ctx.destination.domain === 'slow.test' ? deliver({ host: '127.0.0.6', port: ${heldPort} }) : undefined;`,
  };
  let c: ClusterProcess | null = await startCluster({ config: config(sink.port), scripts, detached: true, dataDir });
  try {
    await c.waitFor('the queue process', () => c!.logs.some((l) => l.msg === 'queue runner started'));
    const id = await submitMessage(c.port('in'), 'a@origin.test', ['x@fast.test', 'y@slow.test']);
    await c.waitFor('both next hops to have the message', () => sink.messages.length === 1 && heldMessages === 1);
    // What a crash now leaves on disk: the fast destination's delivery, recorded.
    const spools = new SpoolSet(new Spool(join(dataDir, 'spool')));
    await c.waitFor('x@fast.test recorded as delivered', async () => {
      const state = await spools.readState(id).catch(() => null);
      return state?.recipients.find((r) => r.address === 'x@fast.test')?.status === 'delivered';
    }, 30_000);
    await killGroup(c);
    await c.stop();
    c = await startCluster({ config: config(sink.port), scripts, detached: true, dataDir });
    await c.waitFor('the message finished after the restart', () => c!.logs.some((l) => l.id === id && l.msg === 'message finished, removed from the spool'));
    assert.equal(heldMessages, 2, 'the slow destination, whose verdict never came, got it again');
    assert.deepEqual(sink.messages.map((m) => m.to), [['x@fast.test']], 'the fast destination got it once');
  } finally {
    await c?.stop();
    for (const s of held) s.destroy();
    peer.close();
    await sink.close();
    await rm(dataDir, { recursive: true, force: true });
  }
});

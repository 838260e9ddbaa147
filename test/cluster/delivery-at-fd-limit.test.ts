/**
 * The queue process at its open-file limit when it connects to a next hop: connect() fails with EMFILE before a
 * packet leaves. That was taken for the next hop being unreachable: the destination was suspended for the first
 * retry delay ("delivery temporarily suspended … connect EMFILE"), so once descriptors were free again every new
 * message for it was still deferred without a connection, for up to that delay. A failure of this process's own
 * resources says nothing about the next hop: no suspension, the deferral says it was local, and the next message
 * goes out as soon as there are descriptors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { greeted, startCluster, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

test('a connect that fails for want of descriptors does not suspend the next hop: the next message goes out once they are free', { timeout: 120_000 }, async () => {
  // A next hop that closes each connection after its message: every attempt connects (none goes over a pooled one).
  let delivered = 0;
  const peer = await startScriptedPeer({ endOfData: (s) => { delivered++; s.end('250 2.0.0 queued\r\n'); return 'stop'; } });
  // The descriptor is refused at the delivery's socket() (a preload library): lowering the process's open-file limit
  // instead made the EMFILE land on whichever call came first, mostly the read of the spool file on a loaded machine.
  const faults = diskFaults();
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(peer.port, { retrySchedule: [600] })}`, env: faults.env });
  let client: Awaited<ReturnType<typeof greeted>> | undefined;
  try {
    client = await greeted(c);
    const send = async (subject: string): Promise<string> => {
      const r = await client!.sendMail('a@example.test', ['b@example.test'], `Subject: ${subject}\r\n\r\nx\r\n`);
      return /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    };
    await send('warm');
    await c.waitFor('the first delivered', () => delivered === 1);
    const attemptOf = (id: string): Record<string, unknown> | undefined => c.logs.find((l) => l.id === id && typeof l.status === 'string');
    faults.arm('socket-emfile');
    const refused = await send('at the limit');
    const failed = await c.waitFor(`the attempt for ${refused}`, () => attemptOf(refused));
    assert.ok(faults.taken('socket-emfile'), 'the attempt\'s socket() was refused');
    assert.equal(failed.status, 'deferred');
    assert.match(String(failed.reply), /out of resources \(EMFILE.*not a failure of the next hop/, 'the deferral says the failure was local');
    const id = await send('after');
    const after = await c.waitFor(`the attempt for ${id}`, () => attemptOf(id));
    assert.equal(after.status, 'sent', `delivered at once: ${String(after.reply)}`);
    const suspended = c.logs.filter((l) => /delivery temporarily suspended/.test(String(l.msg)));
    assert.deepEqual(suspended.map((l) => l.msg), [], 'the next hop is not suspended for this process\'s lack of descriptors');
  } finally {
    client?.destroy(); // left open, its session held the server's stop for the worker's 5 s drain
    await c.stop();
    peer.close();
  }
});

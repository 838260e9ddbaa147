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
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { greeted, startCluster, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';

function hardFileLimit(pid: number): string {
  return /Max open files\s+\S+\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))![1]!;
}

async function queuePid(c: ClusterProcess): Promise<number> {
  return c.waitFor('the queue process ready', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.ready && p.pid)?.pid);
}

test('a connect that fails for want of descriptors does not suspend the next hop: the next message goes out once they are free', { timeout: 120_000 }, async () => {
  // A next hop that closes each connection after its message: every attempt connects (none goes over a pooled one).
  let delivered = 0;
  const peer = await startScriptedPeer({ endOfData: (s) => { delivered++; s.end('250 2.0.0 queued\r\n'); return 'stop'; } });
  const c = await startCluster({ config: `${ONE_WORKER}${deliveryToSink(peer.port, { retrySchedule: [600] })}` });
  try {
    const client = await greeted(c);
    const send = async (subject: string): Promise<string> => {
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: ${subject}\r\n\r\nx\r\n`);
      return /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    };
    await send('warm');
    await c.waitFor('the first delivered', () => delivered === 1);
    const queue = await queuePid(c);
    const hard = hardFileLimit(queue);
    const attemptOf = (id: string): Record<string, unknown> | undefined => c.logs.find((l) => l.id === id && typeof l.status === 'string');
    const connectFailed = (): Record<string, unknown> | undefined => c.logs.find((l) => typeof l.status === 'string' && /EMFILE|descriptors/.test(String(l.reply)));
    try {
      // Until one attempt got as far as its connect: what an attempt opens before it (its spool file) depends on what
      // the process holds open already, so with 0, 1, 2 or 3 descriptors to spare in turn.
      for (let i = 0; i < 20 && !connectFailed(); i++) {
        execFileSync('prlimit', ['--pid', String(queue), `--nofile=${readdirSync(`/proc/${queue}/fd`).length + (i % 4)}:${hard}`]);
        // A few at once: their reads and connects interleave, and one may find no descriptor left for its connect.
        const ids = [await send(`at the limit ${i}a`), await send(`at the limit ${i}b`), await send(`at the limit ${i}c`)];
        for (const id of ids) await c.waitFor(`an attempt for ${id}, or its read failing`, () => attemptOf(id) ?? c.logs.find((l) => l.id === id && /cannot read the spool file now/.test(String(l.msg))));
      }
    } finally {
      execFileSync('prlimit', ['--pid', String(queue), `--nofile=${hard}:${hard}`]);
    }
    const failed = connectFailed();
    assert.ok(failed, `an attempt failed at its connect: ${c.logs.filter((l) => typeof l.status === 'string' || /cannot read/.test(String(l.msg))).map((l) => `${String(l.status ?? l.msg)} ${String(l.reply ?? l.err ?? '')}`.slice(0, 200)).join('\n')}`);
    assert.equal(failed.status, 'deferred');
    assert.match(String(failed.reply), /out of resources \(EMFILE.*not a failure of the next hop/, 'the deferral says the failure was local');
    const id = await send('after');
    const after = await c.waitFor(`the attempt for ${id}`, () => attemptOf(id));
    assert.equal(after.status, 'sent', `delivered at once: ${String(after.reply)}`);
    const suspended = c.logs.filter((l) => /delivery temporarily suspended/.test(String(l.msg)));
    assert.deepEqual(suspended.map((l) => l.msg), [], 'the next hop is not suspended for this process\'s lack of descriptors');
  } finally {
    await c.stop();
    peer.close();
  }
});

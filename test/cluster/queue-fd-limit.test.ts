/**
 * The queue process at its open-file limit (EMFILE: too many connections, a descriptor leak elsewhere):
 * a message it could not read then was put aside as an unreadable spool file, held until a `postern queue
 * retry` or a restart, also once descriptors were free again. A failed system call says nothing about the
 * file: the message is tried again later, and delivered once the fault is gone, by the same process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { startSink } from '../helpers/sink.ts';
import { greeted, startCluster, ONE_WORKER, type ClusterProcess, deliveryToSink } from '../helpers/cluster.ts';

/** The soft and hard open-file limits of a process. */
function fileLimits(pid: number): { soft: string; hard: string } {
  const m = /Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))!;
  return { soft: m[1]!, hard: m[2]! };
}

async function queuePid(c: ClusterProcess): Promise<number> {
  return c.waitFor('the queue process ready', async () => (await c.cluster()).processes.find((p) => p.role === 'queue' && p.ready && p.pid)?.pid);
}

test('messages the queue process could not read at its open-file limit are delivered once descriptors are free again', { timeout: 180_000 }, async () => {
  const sink = await startSink({});
  const c = await startCluster({
    // At debug: a failed read is logged at error once per episode, its repeats (the other messages) at debug.
    config: `log: { level: debug }\n${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}`,
  });
  try {
    const client = await greeted(c);
    // A first message, delivered: the queue process has its views of the worker's spool and is idle.
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'], 'Subject: first\r\n\r\nx\r\n')).code, 250);
    await sink.waitFor(1, 60_000);
    const queue = await queuePid(c);
    const limits = fileLimits(queue);
    // Far below what it has open: every new descriptor (a directory listing, a file, a socket) fails.
    execFileSync('prlimit', ['--pid', String(queue), `--nofile=8:${limits.hard}`]);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: held ${i}\r\n\r\nx\r\n`);
      assert.equal(r.code, 250, 'the worker accepts: its own descriptors are not limited');
      ids.push(/queued as ([0-9a-z]+)/.exec(r.text)![1]!);
    }
    const failedRead = (id: string): boolean => c.logs.some((l) => l.id === id && /spool file/.test(String(l.msg)) && /EMFILE/.test(JSON.stringify(l.err)));
    await c.waitFor('the queue process failed to read each new message', () => ids.every(failedRead), 60_000);
    assert.equal(sink.messages.length, 1);
    execFileSync('prlimit', ['--pid', String(queue), `--nofile=${limits.soft}:${limits.hard}`]);
    const received = await sink.waitFor(4, 90_000);
    assert.deepEqual(received.slice(1).map((m) => /Subject: (held \d)/.exec(m.data.toString())?.[1]).sort(), ['held 0', 'held 1', 'held 2']);
    assert.equal(c.logs.some((l) => l.msg === 'unreadable spool file: not delivering it'), false, 'no message was taken for damaged');
    assert.equal(await queuePid(c), queue, 'the same queue process delivered them (not a restart)');
    await client.quit();
  } finally {
    await c.stop();
    await sink.close();
  }
});

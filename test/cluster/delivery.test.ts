// The one queue process delivers what every worker process accepted, also what a killed worker had
// acknowledged, and marks it done in that worker's journal: the spools end empty.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet } from '../../engine/cluster/spool-set.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, workerPid, TWO_WORKERS, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';

test('the queue process delivers every worker\'s messages, including a killed worker\'s', async () => {
  const sink = await startSink({});
  const c = await startCluster({
    config: `${TWO_WORKERS}${deliveryToSink(sink.port)}`,
  });
  try {
    const victim = await workerPid(c, 0);
    await workerPid(c, 1);
    const acked: string[] = [];
    const send = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const client = await SmtpTestClient.connect(c.port('in'));
        try {
          await client.read(30_000);
          await client.command('EHLO client.test', 30_000);
          const r = await client.sendMail('sender@example.test', ['user@example.test'], `Subject: m${acked.length}\r\n\r\nbody\r\n`);
          const id = /queued as ([0-9a-z]+)/.exec(r.text)?.[1];
          if (r.code === 250 && id) acked.push(id);
        } catch { /* a session of the killed worker */ } finally {
          client.destroy();
        }
      }
    };
    await send(10);
    process.kill(victim, 'SIGKILL');
    await send(10);
    assert.ok(acked.length >= 15);
    await sink.waitFor(acked.length, 60_000);
    const subjects = new Set(sink.messages.map((m) => /Subject: (m\d+)/.exec(m.data.toString())?.[1]));
    assert.equal(subjects.size, acked.length);
    await c.waitFor('empty spools', async () => (await new SpoolSet(new Spool(join(c.dataDir, 'spool'))).list()).length === 0);
  } finally {
    await c.stop();
    await sink.close();
  }
});

test('a predelivery script stuck in a builtin V8 cannot interrupt, on one message: that message is deferred, every other one delivered, nothing fenced', async () => {
  const sink = await startSink({});
  // One worker: the script runs in the queue process; a second worker only idled.
  const c = await startCluster({
    config: `${ONE_WORKER}${deliveryToSink(sink.port)}`,
    // On the queue process's event-loop thread this would hold every delivery until the process was killed.
    scripts: { 'predelivery.js': "export default function (ctx) { if (ctx.message.recipients.some((r) => r.startsWith('poison'))) return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1)); }\n" },
    scriptLimits: 'product', // the poison call hangs in a builtin: its time limit is what gives up on it
  });
  try {
    const send = async (to: string, subject: string): Promise<string> => {
      const client = await SmtpTestClient.connect(c.port('in'));
      try {
        await client.read(30_000);
        await client.command('EHLO client.test', 30_000);
        return (await client.sendMail('sender@example.test', [to], `Subject: ${subject}\r\n\r\nbody\r\n`)).text;
      } finally {
        client.destroy();
      }
    };
    const poison = /queued as ([0-9a-z]+)/.exec(await send('poison@example.test', 'poison'))?.[1];
    assert.ok(poison);
    for (let i = 0; i < 6; i++) assert.match(await send('user@example.test', `m${i}`), /^250 /);
    await sink.waitFor(6, 60_000);
    assert.deepEqual(sink.messages.map((m) => /Subject: (\w+)/.exec(m.data.toString())?.[1]).sort(), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
    await c.waitFor('the poison message deferred by its deadline', async () =>
      c.logs.some((l) => /^policy script predelivery failed: .*timeout/.test(String(l.msg))));
    const status = await c.cluster();
    assert.deepEqual(status.fences, []);
    assert.equal(status.processes.find((p) => p.role === 'queue')!.restarts, 0, 'the queue process was not killed');
    assert.ok((await new SpoolSet(new Spool(join(c.dataDir, 'spool'))).list()).includes(poison), 'the poison message is still queued');
  } finally {
    await c.stop();
    await sink.close();
  }
});

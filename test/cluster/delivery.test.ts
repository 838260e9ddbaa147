// The one queue process delivers what every worker process accepted, also what a killed worker had
// acknowledged, and marks it done in that worker's journal: the spools end empty.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet } from '../../engine/cluster/spool-set.ts';
import { startSink } from '../helpers/sink.ts';
import { startCluster, workerPid, TWO_WORKERS } from './helpers.ts';

test('the queue process delivers every worker\'s messages, including a killed worker\'s', async () => {
  const sink = await startSink({});
  const c = await startCluster({
    config: `${TWO_WORKERS}delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${sink.port} } }
  tls: { mode: none }
  scanIntervalMs: 200
`,
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

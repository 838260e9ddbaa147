import { test } from 'node:test';
import { startSink } from '../helpers/sink.ts';
import { deliveryToSink, greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';

test('explore fsize', { timeout: 300_000 }, async () => {
  const sink = await startSink({ size: 50_000_000 });
  const c = await startCluster({ config: `${ONE_WORKER}spool: { minFreeBytes: 0 }\n${deliveryToSink(sink.port, { retrySchedule: [1] })}`, wrap: ['prlimit', '--fsize=3000000', '--'] });
  try {
    await c.waitFor('ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    const codes: Record<string, number> = {};
    for (let i = 0; i < 40; i++) {
      const client = await greeted(c);
      const r = await client.sendMail('a@example.test', ['b@example.test'], `Subject: s${i}\r\n\r\n${`${'y'.repeat(78)}\r\n`.repeat(i === 0 ? 60000 : 2500)}`);
      codes[r.text] = (codes[r.text] ?? 0) + 1;
      if (i === 0) console.log('big', r.text);
      await client.quit();
    }
    console.log(codes);
    await new Promise((r) => setTimeout(r, 5000));
    console.log('delivered', sink.messages.length);
    console.log((await c.cluster()).processes);
    for (const l of c.logs) if ((l.level as number) >= 40) console.log(JSON.stringify(l).slice(0, 300));
  } finally {
    await c.stop();
    await sink.close();
  }
});

// A script's log() from code it left running after its verdict (a promise it did not wait for, resumed when the store
// answered) carries its session's cid, as its other lines do: it was told under no connection (no cid to find it by)
// or, when the next answers were another call's, under that other client's. A real server, a real Redis (its answers
// come later, so the code resumes in a delivery), real SMTP clients, on the fast path and on isolate threads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

const SCRIPT = `
export default async (ctx) => {
  const who = ctx.address ? ctx.address.address : 'none';
  log('own ' + who);
  await rate('late-log:' + who, 1000, 60);
  // Not waited for: runs after the verdict below.
  Promise.resolve().then(() => Promise.resolve()).then(() => log('late ' + who));
  return accept();
};`;

for (const fastPathMs of [5, 0]) {
  test(`late log lines name their session (fastPathMs ${fastPathMs})`, needsRedis(), async () => {
    const redis = await startRedis();
    const s = await startTestServer({
      config: `store: { redis: { url: "${redis.url}", timeoutMs: 2000 } }\nsandbox: { fastPathMs: ${fastPathMs}, timeoutMs: 5000 }\nlocalDomains: [example.com]\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0", limits: { greetingDelayMs: 0 } }\n`,
      scripts: { 'mailfrom.js': SCRIPT },
    });
    try {
      const senders = ['a', 'b', 'c', 'd', 'e', 'f'].map((x) => `${x}@example.net`);
      const clients = await Promise.all(senders.map(async () => {
        const c = await SmtpTestClient.connect(s.port('mx'));
        await c.read();
        await c.command('EHLO client.example');
        return c;
      }));
      // In parallel (their calls share entries and deliveries), then one alone.
      const replies = await Promise.all(clients.slice(0, 5).map((c, i) => c.command(`MAIL FROM:<${senders[i]}>`)));
      for (const r of replies) assert.equal(r.code, 250);
      assert.equal((await clients[5]!.command(`MAIL FROM:<${senders[5]}>`)).code, 250);
      const line = (text: string) => s.logs.find((l) => l.msg === text);
      for (const sender of senders) {
        const own = line(`own ${sender}`);
        assert.ok(own && typeof own.cid === 'string', `the call's own line has its cid: ${JSON.stringify(own)}`);
        // Logged after the reply: waited for by the line's presence.
        await until(`the late line of ${sender}`, () => line(`late ${sender}`) !== undefined);
        const late = line(`late ${sender}`)!;
        assert.equal(late.cid, own.cid, `the late line of ${sender} names its session: ${JSON.stringify(late)}`);
      }
      for (const c of clients) c.destroy();
    } finally {
      await s.stop();
      await redis.stop();
    }
  });
}

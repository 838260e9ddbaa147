/**
 * A script's rate() and counter().add() count once per call, over real SMTP with a real store (memory and
 * Redis) and over a policy service's socket, when the fast path stops the call and runs it again on an isolate thread: the re-run gets the
 * stopped attempt's answers instead of counting again (engine/sandbox/operation-journal.ts). The fast path
 * is 1 ms and the script spins 10⁷ iterations (counted work, not time: some 10 ms on a fast machine), so attempts are
 * stopped; that they were is read from the log (the warning that the hook used up the fast path), never from timing.
 * (3·10⁷ made the same stops at three times the CPU, and on a loaded machine two cases once failed closed: 451.)
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from 'redis';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { PolicyClient, rcptRequest } from '../policy-service/helpers/policy-client.ts';

const redisOpts = needsRedis();

const BURN = 'let x = 0; for (let i = 0; i < 1e7; i++) x += i;';
const SCRIPTS = {
  // Both operations start before the loop (a promise not awaited yet): the stopped attempt had started them.
  started: `export default async function (ctx) {
  const who = ctx.address.localPart;
  const counted = rate('rate:' + who, 1000000, 3600);
  const added = counter('added:' + who).add(1, 3600);
  ${BURN}
  const r = await counted;
  return reject('counted ' + r.count + ' added ' + (await added), { code: 550 });
}`,
  // Awaited first, then the loop: with a store that answers at once the loop runs in the same fast-path entry;
  // with Redis in the entry that delivers the answers, also on the fast path (the call then runs again whole).
  awaited: `export default async function (ctx) {
  const who = ctx.address.localPart;
  const r = await rate('rate:' + who, 1000000, 3600);
  const n = await counter('added:' + who).add(1, 3600);
  ${BURN}
  return reject('counted ' + r.count + ' added ' + n, { code: 550 });
}`,
};

let redis: TestRedis | undefined;
before(async () => {
  if (!redisOpts.skip) redis = await startRedis();
});
after(async () => {
  await redis?.stop();
});

/** Read a store key back: what was counted in the end. */
type Reader = (key: string) => Promise<number>;

async function withServer(store: 'memory' | 'redis', variant: keyof typeof SCRIPTS, fn: (server: TestServer, read: Reader) => Promise<void>): Promise<void> {
  const memory = new MemoryCounterStore();
  const prefix = `once-${variant}:`;
  const server = await startTestServer({
    config: `
localDomains: [example.com]
${store === 'redis' ? `store:\n  redis: { url: "${redis!.url}", keyPrefix: "${prefix}", timeoutMs: 2000 }\n` : ''}sandbox: { timeoutMs: 5000, fastPathMs: 1, isolates: 2 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
policyServices:
  - name: policy
    listen: 127.0.0.1:0
`,
    scripts: { 'rcptto.ts': SCRIPTS[variant] },
    memoryStore: memory,
  });
  let raw: ReturnType<typeof createClient> | undefined;
  try {
    const read: Reader = store === 'memory'
      ? (key) => memory.get(key)
      : async (key) => {
        raw ??= createClient({ url: redis!.url });
        if (!raw.isOpen) await raw.connect();
        return Number(await raw.get(prefix + key) ?? 0);
      };
    await fn(server, read);
  } finally {
    await raw?.close();
    await server.stop();
  }
}

/** The log says the hook used up the fast path (after stopped attempts that used its time). */
const movedOff = (server: TestServer): boolean => server.logs.some((l) => l.level === 40 && /used up the 1 ms fast path|held the event loop/.test(String(l.msg)));

/**
 * RCPTs (each a call) until the log says the hook used up the fast path (it then runs on isolate threads
 * only), and one more; each reply must show exactly one count per message so far.
 */
async function countsOnce(server: TestServer, read: Reader): Promise<void> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  try {
    await c.hello({ name: 'client.example' });
    assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
    const slow = (): boolean => movedOff(server);
    let sent = 0;
    let extra = 1;
    while (extra > 0 && sent < 30) {
      if (slow()) extra--;
      sent++;
      const reply = await c.command('RCPT TO:<alice@example.com>');
      assert.match(reply.text, new RegExp(`^550 .*counted ${sent} added ${sent}$`), `message ${sent}`);
    }
    assert.ok(slow(), 'fast-path attempts were stopped and run again (the hook was moved off the fast path)');
    assert.equal(await read('script:rate:rate:alice'), sent, 'rate() counted each message once');
    assert.equal(await read('script:counter:added:alice'), sent, 'counter().add() added once per message');
  } finally {
    await c.quit();
  }
}

for (const variant of ['started', 'awaited'] as const) {
  test(`memory store: operations ${variant} before a fast-path stop count once per message`, async () => {
    await withServer('memory', variant, countsOnce);
  });
  test(`Redis: operations ${variant} before a fast-path stop count once per message`, redisOpts, async () => {
    await withServer('redis', variant, countsOnce);
  });
}

test('policy service: operations started before a fast-path stop count once per request (memory store)', async () => {
  await withServer('memory', 'started', async (server, read) => {
    const client = await PolicyClient.connect({ port: Number(server.policyAddresses.get('policy')!.split(':').pop()) });
    try {
      let sent = 0;
      let extra = 1;
      while (extra > 0 && sent < 30) {
        if (movedOff(server)) extra--;
        sent++;
        const answer = await client.ask(rcptRequest({ recipient: 'alice@example.com' }));
        assert.match(answer, new RegExp(`^action=550 .*counted ${sent} added ${sent}$`), `request ${sent}`);
      }
      assert.ok(movedOff(server), 'fast-path attempts were stopped and run again');
      assert.equal(await read('script:rate:rate:alice'), sent);
      assert.equal(await read('script:counter:added:alice'), sent);
    } finally {
      client.socket.destroy();
    }
  });
});

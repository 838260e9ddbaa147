/**
 * One client's heavy calls cannot make another client's calls of the same hook wait behind them, over real
 * SMTP sockets: sessions from one address hold the only isolate with a script that spins until its time limit,
 * and queue more such calls. A call from another address, queued after them, must go first when the isolate is
 * freed (its client has had no isolate time lately): it waits for one heavy call at most, and gets its verdict.
 * In first-come order it waited for the whole queue and failed at its deadline (451); under a burst of large
 * header sections, innocent clients' data calls did exactly that.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { withSandbox } from '../helpers/sandbox.ts';
import { js } from '../helpers/sandbox-fixtures.ts';
import { ScriptFailure } from '../../engine/sandbox/index.ts';

// fastPathMs 0: every call goes to an isolate thread, as a hook's calls do once its script overran the fast path.
const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 5000, isolates: 1, fastPathMs: 0 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 100 }
`;

const SCRIPTS = {
  'rcptto.ts': `export default function (ctx) {
    log('start ' + ctx.address.localPart);
    if (ctx.address.localPart.startsWith('heavy')) for (;;);
  }`,
};

let server: TestServer;
before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS }); });
after(async () => { await server.stop(); });

const queued = async (): Promise<number> => (await server.runtime.generation.sandboxFor(undefined).stats()).queued;
const started = (): string[] => server.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('start ')).map((m) => m.slice(6));

async function session(localAddress: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('mx'), { localAddress });
  await c.hello();
  assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
  return c;
}

test("a client's call queued behind another client's heavy calls of the same hook goes first", async () => {
  const heavy = await Promise.all([1, 2, 3, 4].map(() => session('127.0.0.2')));
  const other = await session('127.0.0.1');
  const heavyReplies = [heavy[0]!.command('RCPT TO:<heavy1@example.com>', 30_000)];
  await until('the first heavy call runs', () => started().includes('heavy1'));
  for (let i = 1; i < 4; i++) {
    heavyReplies.push(heavy[i]!.command(`RCPT TO:<heavy${i + 1}@example.com>`, 30_000));
    await until(`${i} heavy calls queued`, async () => (await queued()) === i);
  }
  const reply = other.command('RCPT TO:<user@example.com>', 30_000);
  await until('the other client\'s call queued', async () => (await queued()) === 4 || started().includes('user'));
  assert.match((await reply).text, /^250 /, 'its own verdict, not a 451 at its deadline');
  const order = started();
  assert.deepEqual(order.slice(0, 2), ['heavy1', 'user'], `it ran right after the heavy call that held the isolate: ${order.join(', ')}`);
  for (const r of await Promise.all(heavyReplies)) assert.match(r.text, /^451 /);
  await Promise.all([...heavy, other].map((c) => c.quit()));
});

/**
 * Fair order helps a call that is already waiting; one that arrives while a client's heavy calls hold every
 * isolate waited up to timeoutMs for one of them (and, on a machine whose CPU those calls kept busy, ran out of
 * its deadline: measured with test/bench/client-starvation.ts). One client holds at most isolatesPerClient
 * isolates (default: half the pool): its next heavy call waits with an isolate idle, and another client's call
 * runs on that one at once, answered while the heavy call still runs.
 */
test("a client's heavy calls hold at most half the isolates: another client's call runs at once", async () => {
  const pool = await startTestServer({
    // A heavy call holds its isolate for 15 s: the other client's reply must come well within it, however loaded the machine.
    config: CONFIG.replace('isolates: 1', 'isolates: 2').replace('timeoutMs: 5000', 'timeoutMs: 15000'),
    scripts: SCRIPTS,
  });
  try {
    const sandbox = (): ReturnType<typeof pool.runtime.generation.sandboxFor> => pool.runtime.generation.sandboxFor(undefined);
    const startedHere = (): string[] => pool.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('start ')).map((m) => m.slice(6));
    const open = async (localAddress: string): Promise<SmtpTestClient> => {
      const c = await SmtpTestClient.connect(pool.port('mx'), { localAddress });
      await c.hello();
      assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
      return c;
    };
    const heavy = await Promise.all([1, 2, 3].map(() => open('127.0.0.2')));
    const other = await open('127.0.0.1');
    let heavyAnswered = 0;
    const heavyReplies: Array<Promise<string>> = [];
    const send = (i: number): void => {
      heavyReplies.push(heavy[i]!.command(`RCPT TO:<heavy${i + 1}@example.com>`, 30_000).then((r) => { heavyAnswered++; return r.text; }));
    };
    send(0);
    await until('the first heavy call runs', () => startedHere().includes('heavy1'));
    send(1);
    send(2);
    // Both further heavy calls wait — with an isolate idle — instead of taking it (without the limit heavy2 ran on it).
    await until('two heavy calls queued', async () => (await sandbox().stats()).queued === 2 || startedHere().includes('heavy2'));
    const stats = await sandbox().stats();
    assert.deepEqual([stats.queued, stats.isolates.filter((i) => i.state === 'idle').length], [2, 1], 'the excess waits, one isolate stays free');
    const reply = await other.command('RCPT TO:<user@example.com>', 30_000);
    assert.match(reply.text, /^250 /, 'its own verdict');
    assert.equal(heavyAnswered, 0, 'answered while the first heavy call still held its isolate, not after it');
    assert.deepEqual(startedHere(), ['heavy1', 'user']);
    for (const text of await Promise.all(heavyReplies)) assert.match(text, /^451 /);
    await Promise.all([...heavy, other].map((c) => c.quit()));
  } finally {
    await pool.stop();
  }
});

/**
 * An isolate a client's call lost (its memory limit, or given up on at its deadline) is rebuilt; meanwhile it still
 * counts as that client's. It was let go at once, and the client's next call took the other isolate: the pool then
 * had one isolate rebuilding and the other spinning for that client, and another client's call of another hook
 * waited for the rebuild (a script stuck in a builtin on a loaded machine: each of its calls abandoned one isolate
 * and took the next, and other clients' calls failed at their deadlines).
 */
test("while an isolate a client's call lost is rebuilt, that client's next call waits; another client's runs at once", async () => {
  const logs: string[] = [];
  const connection = (remoteAddress: string) => ({ id: 'c', remoteAddress, remotePort: 1, localAddress: '127.0.0.1', localPort: 25 });
  await withSandbox({
    host: { lookup: () => null, log: (_cid, _file, _level, message) => { logs.push(message); } },
    isolates: 2, isolatesPerClient: 1, fastPathMs: 0, timeoutMs: 15_000, memoryLimitMb: 16,
    scripts: [
      js('rcptto', `export default function (ctx) {
        if (ctx.oom) { const kept = []; for (;;) kept.push(new Array(1e5).fill(1)); }
        log('spin starts');
        for (const end = Date.now() + 15_000; Date.now() < end;);
      }`),
      js('helo', 'export default function () { log("helo runs"); return accept(); }'),
    ],
  }, async (sandbox) => {
    await assert.rejects(sandbox.invoke('rcptto', { connection: connection('192.0.2.1'), oom: true }, 'x1'), (e) => e instanceof ScriptFailure && e.kind === 'memory');
    assert.equal((await sandbox.stats()).isolates.filter((i) => i.state === 'rebuilding').length, 1, 'its isolate is being rebuilt');
    const spin = sandbox.invoke('rcptto', { connection: connection('192.0.2.1') }, 'x2').catch((e: unknown) => e);
    assert.deepEqual(await sandbox.invoke('helo', { connection: connection('198.51.100.1') }, 'y1'), { verdict: 'accept' });
    // The rebuild may end (and the spin start on it) before this line runs, on a loaded machine: the order is what counts.
    assert.equal(logs.find((m) => m === 'spin starts' || m === 'helo runs'), 'helo runs',
      'the other client\'s call ran first, on the isolate that stayed free');
    await until('the spinning call runs on the rebuilt isolate', () => logs.includes('spin starts'));
    await sandbox.dispose();
    await spin;
  });
});

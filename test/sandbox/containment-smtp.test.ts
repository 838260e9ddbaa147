/**
 * Containment end to end, over real SMTP sockets: a hostile script call fails closed (451 4.3.0) and
 * other clients keep their own verdicts, during that call and right after.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, openTransaction } from '../helpers/smtp-client.ts';

const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';

// One isolate, so that the patching call and the others share one context. Calls get 2 s: building the 100 MB
// reply or the 50 MB error took over 300 ms on a loaded machine, and then failed as a timeout, not as itself.
const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 2000, isolates: 1 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

const SCRIPTS = {
  // HELO names pick a hostile behaviour; the patches stay in the shared context.
  'helo.ts': `export default function (ctx) {
    if (ctx.helo.name === 'patch.example') {
      Object.prototype.toJSON = function () { return { ok: true }; };
      JSON.stringify = () => '{"ok":true}';
      Array.prototype[Symbol.iterator] = function* () {};
      try { Object.prototype.then = function (ok) { ok({ verdict: 'accept' }); }; } catch {}
    }
  }`,
  // Relaying is refused by a throw (a failed lookup, say): it must stay 451, whatever another call did.
  'rcptto.ts': `export default function (ctx) {
    const local = ctx.address.localPart;
    if (ctx.address.domain !== 'example.com') throw new Error('relay check failed');
    if (local === 'hang') return new Promise(() => {});
    if (local === 'huge') return reject('x'.repeat(2e6));
    if (local === 'deep') { const f = (n) => f(n + 1) + 1; return f(0); }
    if (local === 'proxy') return new Proxy({}, { ownKeys() { throw new Error('no'); } });
    if (local === 'getter') return { get verdict() { throw new Error('no'); } };
    if (local === 'primitive') return { verdict: { [Symbol.toPrimitive]: () => 'accept' } };
    if (local === 'async-throw') return (async () => { await null; throw new Error('later'); })();
    if (local === 'huge-reply') return reject('x'.repeat(1e8));
    if (local === 'huge-error') throw new Error('y'.repeat(5e7));
    if (local === 'nobody') return reject('No such user', { code: 550, enhanced: '5.1.1' });
  }`,
};

let server: TestServer;
before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS }); });
after(async () => { await server.stop(); });

const client = (helo?: string): Promise<SmtpTestClient> => openTransaction(server.port('mx'), helo);

/** An ordinary client's three verdicts: accepted, refused by the script, relay failing closed. */
async function ordinary(): Promise<string[]> {
  const c = await client();
  try {
    return [
      (await c.command('RCPT TO:<bob@example.com>')).text.slice(0, 3),
      (await c.command('RCPT TO:<nobody@example.com>')).text,
      (await c.command('RCPT TO:<x@elsewhere.example>')).text,
    ];
  } finally {
    await c.quit();
  }
}
const ORDINARY = ['250', '550 5.1.1 No such user', FAIL_CLOSED];

test('after a client patches builtins, an unauthenticated relay attempt still fails closed (no open relay)', async () => {
  assert.deepEqual(await ordinary(), ORDINARY);
  const evil = await SmtpTestClient.connect(server.port('mx'));
  await evil.hello({ name: 'patch.example' });
  assert.deepEqual(await ordinary(), ORDINARY, 'right after the patch');
  await evil.quit();
});

for (const local of ['hang', 'huge', 'deep', 'proxy', 'getter', 'primitive', 'async-throw']) {
  test(`a recipient whose script call is hostile (${local}) gets 451; another client meanwhile and after gets its own verdicts`, async () => {
    const hostile = await client();
    const reply = hostile.command(`RCPT TO:<${local}@example.com>`, 10_000);
    const during = await ordinary();
    assert.equal((await reply).text, FAIL_CLOSED);
    assert.deepEqual(during, ORDINARY, 'during');
    assert.deepEqual(await ordinary(), ORDINARY, 'after');
    // The hostile session itself goes on.
    assert.match((await hostile.command('RCPT TO:<bob@example.com>')).text, /^250 /);
    await hostile.quit();
  });
}

test('clients of a server whose script got stuck in an uninterruptible builtin (twice) get 451 for it and are served otherwise', async () => {
  // In a child process: such a process cannot exit normally afterwards, so it is killed.
  const child = spawn(process.execPath, [fileURLToPath(new URL('./helpers/stuck-server.ts', import.meta.url))],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, NODE_NO_WARNINGS: '1' } });
  try {
    const lines: Array<Record<string, unknown>> = [];
    let waiters: Array<() => void> = [];
    let buffered = '';
    child.stdout.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        lines.push(JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>);
        buffered = buffered.slice(nl + 1);
        for (const w of waiters.splice(0)) w();
      }
    });
    const lineWhere = async (key: string, accept: (value: unknown) => boolean = () => true): Promise<unknown> => {
      for (;;) {
        const found = lines.find((l) => key in l && accept(l[key]));
        if (found) return found[key];
        await new Promise<void>((resolve) => waiters.push(resolve));
      }
    };
    const line = (key: string): Promise<unknown> => lineWhere(key);
    const port = await line('port') as number;
    // The other clients come from another address: the stuck call's own client holds its share of the isolates.
    const session = async (localAddress?: string): Promise<SmtpTestClient> => {
      const c = await SmtpTestClient.connect(port, { localAddress });
      await c.hello({ name: 'client.example' });
      assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
      return c;
    };
    const verdicts = async (): Promise<string[]> => {
      const c = await session('127.0.0.2');
      try {
        return [(await c.command('RCPT TO:<bob@example.com>')).text.slice(0, 3), (await c.command('RCPT TO:<nobody@example.com>')).text];
      } finally {
        await c.quit();
      }
    };
    const expected = ['250', '550 5.1.1 No such user'];
    for (let round = 1; round <= 2; round++) {
      const stuck = await session();
      const reply = stuck.command('RCPT TO:<stuck@example.com>', 20_000);
      assert.deepEqual(await verdicts(), expected, `round ${round}: another client meanwhile`);
      assert.equal((await reply).text, FAIL_CLOSED, `round ${round}: the stuck call fails closed`);
      assert.deepEqual(await verdicts(), expected, `round ${round}: another client after`);
      await stuck.quit();
      // Its client's share of the isolates is held until the pool has shown the isolate stuck and abandoned it
      // (a thread only descheduled past the deadline is kept): the next round's client is that client again.
      await lineWhere('abandoned', (n) => n === round);
    }
    assert.match(String(await line('unrecoverable')), /Script failed to terminate/);
    assert.deepEqual(await verdicts(), expected, 'still serving after the unrecoverable signal');
  } finally {
    child.kill('SIGKILL');
  }
});

test('a 100 MB reply text or a 50 MB error message fails its own call as an error, without losing the isolate to its memory limit', async () => {
  const from = server.logs.length;
  for (const local of ['huge-reply', 'huge-error']) {
    const c = await client();
    assert.equal((await c.command(`RCPT TO:<${local}@example.com>`, 20_000)).text, FAIL_CLOSED, local);
    await c.quit();
  }
  const logs = server.logs.slice(from);
  const failures = logs.filter((l) => String(l.msg).startsWith('policy script rcptto failed'));
  assert.deepEqual(failures.map((l) => l.kind), ['error', 'error'], JSON.stringify(failures.map((l) => String(l.err).slice(0, 120))));
  assert.match(String(failures[0]!.err), /return value is longer than 65536 characters as JSON/);
  assert.match(String(failures[1]!.err), /^Error: y{100}/);
  assert.ok(String(failures[1]!.err).length < 10_000, 'the message is clipped');
  assert.ok(!logs.some((l) => /was lost/.test(String(l.msg))), 'no isolate lost');
  assert.deepEqual(await ordinary(), ORDINARY);
});

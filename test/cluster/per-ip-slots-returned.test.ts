// Under `postern serve` a connection's per-IP slot, counted by the supervisor, goes back when its session ends.
// One server (one worker) for both cases, each on a listener of its own: a listener's per-address counts are its
// own (keyed by the listener's name), and the cases run one after the other.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let pki: TestPki;
let server: ClusterProcess | undefined;
before(async () => {
  pki = await makeTestPki();
  server = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
listeners:
  - name: tls
    listen: 127.0.0.1:{PORT:tls}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1 }
`,
  });
});
after(() => server?.stop());

/**
 * A connection's per-IP slot goes back when its session ends, STARTTLS included.
 * smtp-server's STARTTLS removes every listener of the plain socket, the worker's close listener that gave
 * the slot back to the supervisor among them: each STARTTLS session kept its slot for ever, and after
 * `maxConnectionsPerIp` sessions (in total, not at once) the server refused that address until the worker
 * was replaced (found by the serve benchmark at one message per connection).
 */
test('STARTTLS sessions one after another never use up maxConnectionsPerIp', async () => {
  const cluster = server!;
  const ca = await readFile(pki.ca.cert, 'utf8');
  // Six sessions, at most one open at a time: each must be greeted with 220 (a leaked slot gives 421).
  for (let i = 0; i < 6; i++) {
    // The slot of the session before goes back asynchronously (worker → supervisor): wait for it.
    const c = await cluster.waitFor(`session ${i + 1} greeted`, async () => {
      const client = await SmtpTestClient.connect(cluster.port('tls'));
      const greeting = await client.read(30_000);
      if (greeting.code === 220) return client;
      assert.match(greeting.text, /^421 4\.7\.0 Too many connections/);
      client.destroy();
      return null;
    });
    assert.equal((await c.command('EHLO client.example')).code, 250);
    await c.starttls({ ca, servername: 'localhost' });
    assert.equal((await c.command('EHLO client.example')).code, 250);
    assert.equal((await c.sendMail('a@example.org', ['b@example.test'])).code, 250);
    await c.quit();
  }
  // Slots of open STARTTLS sessions are still held: two open, the third is refused.
  const open: SmtpTestClient[] = [];
  for (let i = 0; i < 2; i++) {
    const c = await cluster.waitFor(`open session ${i + 1} greeted`, async () => {
      const client = await SmtpTestClient.connect(cluster.port('tls'));
      if ((await client.read(30_000)).code === 220) return client;
      client.destroy();
      return null;
    });
    await c.command('EHLO client.example');
    await c.starttls({ ca, servername: 'localhost' });
    assert.equal((await c.command('EHLO client.example')).code, 250);
    open.push(c);
  }
  const third = await SmtpTestClient.connect(cluster.port('tls'));
  assert.match((await third.read(30_000)).text, /^421 4\.7\.0 Too many connections/);
  third.destroy();
  for (const c of open) await c.quit();
});

// A client at its per-IP limit that reconnects as soon as its last connection closed must find its slot
// free under `postern serve` too, however the worker's returned slots and the supervisor's hand-overs cross
// on the IPC channel (shared-counters.ts: each hand-over names the last return the supervisor had read).
// Many clients, each at its limit of one, reconnect in a loop; every refusal is counted.
const CLIENTS = 8;
const ROUNDS = 60;

test('an immediate reconnect at maxConnectionsPerIp is never refused (one worker, many clients)', async () => {
  const c = server!;
  await workerPid(c, 0);
  const refused: string[] = [];
  let greeted = 0;
  // Each client (its own address) opens, is greeted, quits, waits until the server closed, then reconnects.
  const client = async (n: number): Promise<void> => {
    for (let i = 0; i < ROUNDS; i++) {
      const s = await SmtpTestClient.connect(c.port('in'), { localAddress: `127.0.1.${n + 1}` });
      const r = await s.read(30_000);
      if (r.code === 220) {
        greeted++;
        s.write('QUIT');
        await s.read(30_000);
      } else {
        refused.push(`127.0.1.${n + 1} round ${i}: ${r.text}`);
      }
      assert.ok(await s.waitClosed(30_000), 'the server closes after QUIT or its refusal');
    }
  };
  await Promise.all(Array.from({ length: CLIENTS }, (_, n) => client(n)));
  assert.deepEqual(refused, [], `refused ${refused.length} of ${CLIENTS * ROUNDS} reconnects`);
  assert.equal(greeted, CLIENTS * ROUNDS);
});

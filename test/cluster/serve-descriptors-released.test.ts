/**
 * Every failure path under `postern serve` gives back what it took, in every process: a descriptor, a thread or a
 * child kept per failed handshake, cut connection, failed script, vanished policy client, scrape, store outage or
 * reload is invisible in any one test, and after months of scanners and broken peers the process reaches its limit.
 * Each path runs a few dozen times (after one warm-up round) against one server with workerChoice roundRobin (the
 * supervisor accepts and hands every connection over, policy services' too); afterwards the supervisor's, the
 * worker's and the queue process's open descriptors (/proc/PID/fd, by kind) and threads are back to their baseline,
 * and no process was replaced. (test/app/descriptors-released.test.ts does the same in one process.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, workerPid, ROUND_ROBIN } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';
import { closed } from '../helpers/wait.ts';
import { snapshot, descriptorsBackTo, type ResourceSnapshot } from '../helpers/process-resources.ts';
import { requestText, rcptRequest } from '../policy-service/helpers/policy-client.ts';

const ROUNDS = 12;
const RELOADS = 8;
const STORE_OUTAGES = 3;

test('under postern serve every failure path gives its descriptors and threads back, in every process', { ...needsRedis(), timeout: 300_000 }, async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const stranger = { cert: await readFile(pki.clients.stranger.cert, 'utf8'), key: await readFile(pki.clients.stranger.key, 'utf8') };
  const redis = await startRedis();
  const tlsOf = (mode: string, cc: string): string => `{ mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [${pki.ca.cert}] }`;
  const c = await startCluster({
    config: `${ROUND_ROBIN}
workers: 1
localDomains: [example.test]
sandbox: { timeoutMs: 300 }
store: { redis: { url: "${redis.url}", timeoutMs: 200 } }
admin: { listen: "127.0.0.1:{PORT:admin}" }
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, tls: ${tlsOf('starttls', 'request')}, auth: { mechanisms: [PLAIN] }, limits: { greetingDelayMs: 0, maxErrors: 100000, authFailuresPerIp: 100000 } }
  - { name: strict, listen: "127.0.0.1:{PORT:strict}", reverseDns: false, tls: ${tlsOf('implicit', 'require')}, limits: { greetingDelayMs: 0 } }
policyServices:
  - { name: pol, listen: "127.0.0.1:{PORT:pol}" }
`,
    scripts: {
      'rcptto.ts': `export default async (ctx) => {
        if (ctx.address.localPart === 'rate') { await rate('k', 1000000, 60); return accept(); }
        if (ctx.address.localPart === 'throws') throw new Error('no');
        return accept();
      };`,
    },
  });
  try {
    await workerPid(c, 0);
    const port = (name: string): number => c.port(name);
    const processes = async (): Promise<Map<string, number>> => {
      const status = await c.cluster();
      return new Map([['supervisor', c.proc.pid!], ...status.processes.filter((p) => p.pid).map((p) => [`${p.role} ${p.index}`, p.pid!] as [string, number])]);
    };
    const session = async (): Promise<SmtpTestClient> => {
      const x = await SmtpTestClient.connect(port('in'));
      assert.equal((await x.read(30_000)).code, 220);
      assert.equal((await x.command('EHLO client.test', 30_000)).code, 250);
      return x;
    };
    const paths: Array<[string, number, (i: number) => Promise<void>]> = [
      ['a client certificate from an unknown CA (implicit TLS, required)', ROUNDS, async () => {
        await SmtpTestClient.connect(port('strict'), { implicitTls: { ca, ...stranger } })
          .then(async (x) => { await x.read().catch(() => undefined); x.socket.destroy(); }, () => undefined);
      }],
      ['plaintext on the implicit-TLS port', ROUNDS, async () => {
        const s = net.connect(port('strict'), '127.0.0.1');
        s.on('error', () => undefined);
        s.resume();
        s.write('EHLO client.test\r\n');
        await closed(s);
      }],
      ['a client that resets in the middle of its handshake', ROUNDS, async () => {
        const raw = net.connect(port('strict'), '127.0.0.1');
        raw.on('error', () => undefined);
        await new Promise((r) => raw.once('connect', r));
        const t = tls.connect({ socket: raw, rejectUnauthorized: false });
        t.on('error', () => undefined);
        await new Promise((r) => setImmediate(r));
        raw.resetAndDestroy();
      }],
      ['a client that resets in the middle of DATA', ROUNDS, async () => {
        const x = await session();
        await x.command('MAIL FROM:<a@example.test>');
        await x.command('RCPT TO:<b@example.test>');
        assert.equal((await x.command('DATA')).code, 354);
        x.socket.write('Subject: cut\r\n\r\nhalf a line');
        await new Promise((r) => setImmediate(r));
        x.socket.resetAndDestroy();
      }],
      ['a client that vanishes in the middle of AUTH (after STARTTLS)', ROUNDS, async () => {
        const x = await SmtpTestClient.connect(port('in'));
        await x.hello({ starttls: { ca } });
        x.write('AUTH PLAIN');
        assert.equal((await x.read()).code, 334);
        x.socket.destroy();
      }],
      // A script that runs out of its time is test/app/descriptors-released's (one process): here, on a loaded CI machine
      // (twice in four runs), the spinning call's session was cut (cause not confirmed: an isolate judged stuck, whose worker
      // is then replaced, would do it), which is not what this test looks at (closing note of 2026-12-07).
      ['scripts that throw and use the store', 5, async () => {
        const x = await session();
        await x.command('MAIL FROM:<a@example.test>');
        assert.equal((await x.command('RCPT TO:<throws@example.test>')).code, 451);
        // 250, or 451 when the store's 200 ms ran out on a loaded machine: either way the call is made and ended.
        assert.match(String((await x.command('RCPT TO:<rate@example.test>')).code), /^(250|451)$/);
        await x.quit();
      }],
      ['a policy client that connects and vanishes', ROUNDS, async () => {
        const s = net.connect(port('pol'), '127.0.0.1');
        s.on('error', () => undefined);
        await new Promise((r) => s.once('connect', r));
        s.destroy();
      }],
      ['a policy client that resets right after its request', ROUNDS, async () => {
        const s = net.connect(port('pol'), '127.0.0.1');
        s.on('error', () => undefined);
        await new Promise((r) => s.once('connect', r));
        s.write(requestText(rcptRequest()));
        await new Promise((r) => setImmediate(r));
        s.resetAndDestroy();
      }],
      ['admin scrapes', ROUNDS, async () => {
        const r = await fetch(`http://127.0.0.1:${port('admin')}/metrics`);
        assert.equal(r.status, 200);
        await r.text();
      }],
      ['the store going down and coming back', STORE_OUTAGES, async () => {
        await redis.stop();
        const x = await session();
        await x.command('MAIL FROM:<a@example.test>');
        await x.command('RCPT TO:<rate@example.test>');
        await redis.start();
        await c.waitFor('the store back', async () => (await x.command('RCPT TO:<rate@example.test>')).code === 250, 30_000);
        await x.quit();
      }],
      ['reloads by a file edit', RELOADS, async () => {
        const before = Object.values((await c.cluster()).reload.processes).map((p) => p.reloads);
        await writeFile(join(c.dir, 'scripts', 'mailfrom.ts'), `export default () => { /* ${Math.random()} */ };`);
        await c.waitFor('every process reloaded', async () => {
          const status = await c.cluster();
          return status.reload.converged && Object.values(status.reload.processes).every((p, i) => p.reloads > (before[i] ?? 0));
        });
      }],
    ];
    for (const [name, rounds, run] of paths) {
      await run(0); // warm-up: isolates, store connections, lazily opened files
      await c.waitFor(`${name}: every process running`, async () => (await c.cluster()).processes.every((p) => p.pid !== null && p.ready));
      const pids = await processes();
      const base = new Map<string, ResourceSnapshot>();
      for (const [role, pid] of pids) base.set(role, await snapshot(pid));
      for (let i = 1; i <= rounds; i++) await run(i);
      assert.deepEqual(await processes(), pids, `${name}: no process replaced`);
      for (const [role, pid] of pids) {
        await descriptorsBackTo(base.get(role)!, `${role} after ${rounds} × ${name}`, { pid, slack: 2 });
        // Pools grow on demand (V8's helper threads, libuv's, isolated-vm's), by a few at a time on a loaded machine
        // (26 → 28 once): a leak adds one or more per round, so fewer than half the rounds more is a pool, not a leak.
        const threads = (await snapshot(pid)).threads;
        assert.ok(threads - base.get(role)!.threads < Math.max(2, Math.ceil(rounds / 2)), `${role} after ${rounds} × ${name}: threads ${base.get(role)!.threads} → ${threads}`);
      }
    }
  } finally {
    await c.stop();
    await redis.stop();
  }
});

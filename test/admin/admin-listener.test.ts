// The admin listener: host names, live keys across a reload, concurrent and unread scrapes, a crowd of idle clients,
// the metrics page and the security headers. One file for what were several (one test process and one load of the
// engine instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import http from 'node:http';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import net from 'node:net';
import { once } from 'node:events';
import { startTestServer, type TestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';
import { configYaml, testListener, smarthostDelivery, testServerTls } from '../helpers/config.ts';
import { freePort } from '../helpers/free-port.ts';
import { startAdminServer, GATHER_GAP_MS, MAX_CONNECTIONS } from '../../engine/admin/admin-server.ts';
import { until, closed } from '../helpers/wait.ts';
import { getFrom, rawHttp, ADMIN_MADE_ROOM, assertAdminCapMakesRoom } from '../helpers/http-per-address.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { makeTestPki, clientTlsOptions, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { needs } from '../helpers/example.ts';

describe('admin-host-names', () => {
  // DNS rebinding against the admin listener: a web page on attacker.example, visited by a browser on the
  // server or its management network, rebinds its name to the listener's address; its requests are then
  // same-origin for the browser and could read /metrics (the accounts and devices of client certificates) and
  // /status. The browser sends Host: attacker.example: refused (421). IP addresses, localhost, the server's
  // hostname and admin.hosts are served (curl, a real client, sending the Host header a browser would).
  const run = promisify(execFile);
  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      config: configYaml({
        hostname: 'mail.example.com',
        localDomains: ['example.com'],
        admin: { listen: '127.0.0.1:0', hosts: ['Metrics.Internal.Example'] },
        listeners: [testListener('mx', { tls: { mode: 'none' } })],
      }),
    });
  });
  after(() => s?.stop());

  /** Status code and body of GET `path` with this Host header (curl connects to 127.0.0.1 whatever it says). */
  async function get(path: string, host: string): Promise<{ status: number; body: string }> {
    const { stdout } = await run('curl', ['-sS', '-H', `Host: ${host}`, '-w', '\n%{http_code}', `http://127.0.0.1:${s.admin!.address.port}${path}`]);
    const at = stdout.lastIndexOf('\n');
    return { status: Number(stdout.slice(at + 1)), body: stdout.slice(0, at) };
  }

  test('a request naming another host (a rebound name) is refused 421; addresses, localhost, hostname and admin.hosts are served', async () => {
    const port = s.admin!.address.port;
    for (const path of ['/metrics', '/status', '/readyz', '/healthz']) {
      for (const host of [`attacker.example:${port}`, 'attacker.example', `mail.example.com.attacker.example:${port}`, `127.0.0.1.nip.io:${port}`]) {
        const r = await get(path, host);
        assert.equal(r.status, 421, `${path} Host: ${host}`);
        assert.doesNotMatch(r.body, /postern_|listeners|ready/, 'nothing of the server in the refusal');
      }
    }
    for (const host of [`127.0.0.1:${port}`, '127.0.0.1', `[::1]:${port}`, `localhost:${port}`, 'LOCALHOST', `mail.example.com:${port}`, 'mail.example.com.', `metrics.internal.example:${port}`]) {
      const r = await get('/metrics', host);
      assert.equal(r.status, 200, `Host: ${host}`);
      assert.match(r.body, /postern_/);
    }
  });
});

describe('admin-live-keys-reload', () => {
  // A single `postern start` judges /readyz's spool check by the floors a reload took (spool.minFreeBytes and
  // spool.minFreeInodes are live, test/reload/key-decisions.ts): it kept the start's, so a spool.minFreeBytes raised
  // above the disk's free space had every message refused (452 4.3.1) while /readyz answered 200. And its Host check
  // takes the hostname a reload set (hostname is live): the new name was refused 421 and the old one still served.
  /** More than any disk here has, in bytes and in inodes. */
  const HUGE = 2 ** 50;
  const FLOORS = 'spool: { minFreeBytes: 0, minFreeInodes: 0 }';

  let s: TestServer;
  before(async () => {
    s = await startTestServer({ config: `hostname: before.example.test\n${PLAIN_MX_CONFIG}admin: { listen: "127.0.0.1:${await freePort()}" }\n${FLOORS}\n` });
  });
  after(() => s?.stop());

  /** postern.yaml edited (`from` → `to`) and the reload done. */
  async function reload(from: string, to: string): Promise<void> {
    const file = join(s.dir, 'postern.yaml');
    const text = await readFile(file, 'utf8');
    assert.ok(text.includes(from), from);
    const serial = s.runtime.generation.serial;
    await writeFile(file, text.replace(from, to));
    for (;;) {
      await s.reloader.whenIdle();
      if (s.runtime.generation.serial !== serial) return;
      await new Promise((r) => setTimeout(r, 25)); // the change not seen yet
    }
  }

  async function readyz(): Promise<{ code: number; body: string }> {
    const res = await fetch(`http://127.0.0.1:${s.admin!.address.port}/readyz`);
    return { code: res.status, body: await res.text() };
  }

  test('spool floors raised and lowered by reloads: /readyz judges by those in force', { timeout: 60_000 }, async () => {
    assert.equal((await readyz()).code, 200);
    await reload(FLOORS, `spool: { minFreeBytes: ${HUGE}, minFreeInodes: 0 }`);
    let ready = await readyz();
    assert.equal(ready.code, 503, ready.body);
    assert.match(ready.body, /below spool\.minFreeBytes \(1125899906842624\)/);
    await reload(`spool: { minFreeBytes: ${HUGE}, minFreeInodes: 0 }`, `spool: { minFreeBytes: 0, minFreeInodes: ${HUGE} }`);
    ready = await readyz();
    assert.equal(ready.code, 503, ready.body);
    assert.match(ready.body, /below spool\.minFreeInodes/);
    await reload(`spool: { minFreeBytes: 0, minFreeInodes: ${HUGE} }`, FLOORS);
    assert.equal((await readyz()).code, 200);
  });

  /** The admin listener's answer to GET /healthz naming `host` in its Host header (as a scrape by that name does). */
  function healthzAs(host: string): Promise<number> {
    const port = s.admin!.address.port;
    return new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/healthz', headers: { host: `${host}:${port}` } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      }).on('error', reject);
    });
  }

  test('a hostname changed by a reload is a Host name of the admin listener, the old one no longer', { timeout: 60_000 }, async () => {
    assert.equal(await healthzAs('before.example.test'), 200);
    assert.equal(await healthzAs('after.example.test'), 421);
    await reload('hostname: before.example.test', 'hostname: after.example.test');
    assert.equal(await healthzAs('after.example.test'), 200);
    assert.equal(await healthzAs('before.example.test'), 421);
  });
});

describe('concurrent-scrapes', () => {
  // A crowd of concurrent /metrics (or /status) requests: each gathered every process's registry (under `postern
  // serve` a round trip to each worker, which serializes its metrics: 60 concurrent scrapers took ~10% of each
  // worker's CPU, the supervisor's ~30%). Now one gathering at a time, shared by the requests made meanwhile.
  /** Sends a GET on a connection of its own: `sent` once the request is written, `body` with the answer. */
  function get(port: number, path: string): { sent: Promise<void>; body: Promise<string> } {
    let sent!: () => void;
    const written = new Promise<void>((r) => { sent = r; });
    const body = new Promise<string>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { text += d; });
        res.on('end', () => resolve(text));
      });
      req.on('finish', sent);
      req.on('error', reject);
    });
    return { sent: written, body };
  }

  test('30 concurrent /metrics and 30 /status requests: one gathering each, its result answers all; the next request gathers again', async () => {
    const calls = { metrics: 0, status: 0 };
    let open!: () => void;
    const gate = new Promise<void>((r) => { open = r; });
    const admin = await startAdminServer('127.0.0.1:0', {
      metrics: async () => { const n = ++calls.metrics; await gate; return { contentType: 'text/plain', text: `scrape ${n}\n` }; },
      readiness: async () => ({}),
      status: async () => { const n = ++calls.status; await gate; return { n }; },
    }, { maxConnectionsPerIp: 64, ipv6PrefixLength: 64 });
    try {
      const port = admin.address.port;
      const requests = [...Array.from({ length: 30 }, () => get(port, '/metrics')), ...Array.from({ length: 30 }, () => get(port, '/status'))];
      await Promise.all(requests.map((r) => r.sent));
      // Their bytes were in before this connection was opened: once it is answered, the server has read them all.
      assert.equal(await get(port, '/healthz').body, 'ok\n');
      open();
      const bodies = await Promise.all(requests.map((r) => r.body));
      assert.deepEqual(calls, { metrics: 1, status: 1 });
      assert.ok(bodies.slice(0, 30).every((b) => b === 'scrape 1\n'));
      assert.ok(bodies.slice(30).every((b) => JSON.parse(b).n === 1));
      assert.equal(await get(port, '/metrics').body, 'scrape 2\n', 'nothing is kept once answered');
    } finally {
      await admin.close();
    }
  });

  // /readyz ran its checks once per request: a spool write probe (utimes), statfs, readdir and a read of status.json
  // each, ~0.1 ms of CPU and five jobs on the libuv thread pool that the spool's writes wait in (single process:
  // the SMTP sessions' own). One client pipelining /readyz on a few connections put thousands of each a second
  // in front of the mail being committed. Now as /metrics: concurrent requests for one listener share one check.
  test('30 concurrent /readyz and 30 /readyz?listener=mx: one check each, its result answers all; the next request checks again', async () => {
    const calls: string[] = [];
    let open!: () => void;
    const gate = new Promise<void>((r) => { open = r; });
    const admin = await startAdminServer('127.0.0.1:0', {
      readiness: async (listener) => {
        calls.push(listener ?? 'all');
        const n = calls.length;
        await gate;
        return { spool: { ok: true, detail: `check ${n}` } };
      },
      status: async () => ({}),
    }, { maxConnectionsPerIp: 64, ipv6PrefixLength: 64 });
    try {
      const port = admin.address.port;
      const requests = [...Array.from({ length: 30 }, () => get(port, '/readyz')), ...Array.from({ length: 30 }, () => get(port, '/readyz?listener=mx'))];
      await Promise.all(requests.map((r) => r.sent));
      assert.equal(await get(port, '/healthz').body, 'ok\n');
      open();
      const details = (await Promise.all(requests.map((r) => r.body))).map((b) => (JSON.parse(b) as { checks: { spool: { detail: string } } }).checks.spool.detail);
      assert.deepEqual(calls, ['all', 'mx']);
      assert.equal(new Set(details.slice(0, 30)).size, 1);
      assert.equal(new Set(details.slice(30)).size, 1);
      assert.notEqual(details[0], details[30], 'each listener its own check');
      assert.equal((JSON.parse(await get(port, '/readyz').body) as { checks: { spool: { detail: string } } }).checks.spool.detail, 'check 3', 'nothing is kept once answered');
    } finally {
      await admin.close();
    }
  });

  // One client asking again as soon as each answer came (a loop of curl, keep-alive) was never concurrent with
  // itself: each request gathered anew, hundreds a second, each a round trip to every worker that serializes its
  // registry (~0.8 ms of its CPU) and, for /status, a count of the spool: a quarter of every worker's CPU taken
  // from its SMTP sessions by one unauthenticated client. A gathering now starts no sooner than GATHER_GAP_MS
  // after the last ended; the requests that come meanwhile wait for it and share it, so every answer is still
  // gathered after its request came (never an older one).
  test(`requests back to back: at most one gathering per ${GATHER_GAP_MS} ms, each answer gathered after its request came`, async () => {
    const calls = { metrics: 0, status: 0, readiness: 0 };
    let state = 0;
    const admin = await startAdminServer('127.0.0.1:0', {
      metrics: async () => { calls.metrics++; return { contentType: 'text/plain', text: `state ${state}\n` }; },
      readiness: async () => { calls.readiness++; return { spool: { ok: true, detail: `state ${state}` } }; },
      status: async () => { calls.status++; return { state }; },
    }, { maxConnectionsPerIp: 64, ipv6PrefixLength: 64 });
    try {
      const port = admin.address.port;
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const ask = (path: string): Promise<string> => new Promise((resolve, reject) => {
        http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => { text += d; });
          res.on('end', () => resolve(text));
        }).on('error', reject);
      });
      const started = performance.now();
      let asked = 0;
      while (performance.now() - started < 1000 || asked < 8) {
        state++;
        const path = ['/metrics', '/status', '/readyz'][asked % 3]!;
        const body = await ask(path);
        asked++;
        const seen = path === '/metrics' ? body : path === '/status' ? `state ${(JSON.parse(body) as { state: number }).state}\n` : `${(JSON.parse(body) as { checks: { spool: { detail: string } } }).checks.spool.detail}\n`;
        assert.equal(seen, `state ${state}\n`, `${path} answered with what was there when it was asked`);
      }
      agent.destroy();
      const elapsed = performance.now() - started;
      // Each kind apart: a slow machine gathers less often, never more.
      const most = Math.floor(elapsed / GATHER_GAP_MS) + 1;
      assert.ok(calls.status <= most, `${calls.status} /status gatherings in ${Math.round(elapsed)} ms`);
      assert.ok(calls.metrics <= most, `${calls.metrics} /metrics gatherings in ${Math.round(elapsed)} ms`);
    } finally {
      await admin.close();
    }
  });

  // The shared check was kept per listener name a client asked for, and the whole map dropped once it held 64
  // names: 64 requests for names the server does not have emptied it, and the next request for a real listener
  // started its own check beside the one running (a client alternating bogus and real names made every request
  // probe the spool). A name that is no listener is answered 404 and takes no place.
  test('/readyz?listener= with 64 unknown names: each answered 404, and the check running for a real listener is still shared', async () => {
    const calls: string[] = [];
    let open!: () => void;
    const gate = new Promise<void>((r) => { open = r; });
    const admin = await startAdminServer('127.0.0.1:0', {
      readiness: async (listener) => {
        if (listener !== undefined && listener !== 'mx') return null;
        calls.push(listener ?? 'all');
        await gate;
        return { spool: { ok: true, detail: `check ${calls.length}` } };
      },
      status: async () => ({}),
    }, { maxConnectionsPerIp: 64, ipv6PrefixLength: 64 });
    try {
      const port = admin.address.port;
      const first = get(port, '/readyz?listener=mx');
      await first.sent;
      for (let i = 0; i < 64; i++) assert.equal(await get(port, `/readyz?listener=bogus${i}`).body, `no listener "bogus${i}"\n`);
      const later = get(port, '/readyz?listener=mx');
      await later.sent;
      assert.equal(await get(port, '/healthz').body, 'ok\n'); // the request above is read by now
      open();
      const bodies = await Promise.all([first.body, later.body]);
      assert.deepEqual(calls, ['mx'], 'one check, shared');
      assert.equal(bodies[0], bodies[1]);
    } finally {
      await admin.close();
    }
  });
});

describe('unread-answers', () => {
  // A client of the admin listener that pipelines requests and never reads the answers: once the socket buffers
  // were full the server could write no more and read no more, and no timeout applied (the requests were whole,
  // the connection not idle), so the connection was held for good. On loopback every local client shares one
  // address: admin.maxConnectionsPerIp (8) such connections from any local user kept the Prometheus scrape out
  // until a restart. Each answer now has RESPONSE_DEADLINE_MS to leave; then the connection is closed. Here the server's
  // deadline is DEADLINE_MS rather than the product's 30 s, waited out idle: the fault is "for good", not 30 s.
  /** The server's response deadline (long enough for /healthz on a loaded machine; RESPONSE_DEADLINE_MS is 30 s). */
  const DEADLINE_MS = 3000;

  /** 1 MiB of metrics: 40 pipelined answers are more than any socket buffers hold. */
  const BIG = `# ${'x'.repeat(1024 * 1024)}\n`;

  function healthz(port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/healthz', agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0); }).on('error', reject);
    });
  }

  test('clients that pipeline requests and never read the answers are closed once an answer cannot leave; the listener serves again', { timeout: DEADLINE_MS + 90_000 }, async () => {
    const admin = await startAdminServer('127.0.0.1:0', {
      metrics: async () => ({ contentType: 'text/plain', text: BIG }),
      readiness: async () => ({}),
      status: async () => ({}),
    }, { maxConnectionsPerIp: 8, ipv6PrefixLength: 64, responseDeadlineMs: DEADLINE_MS });
    try {
      const port = admin.address.port;
      const stuck = await Promise.all(Array.from({ length: 8 }, async () => {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        await once(s, 'connect');
        s.pause(); // never reads
        s.write('GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.repeat(40));
        return s;
      }));
      // A client that does not read does not see the close either: it learns of it when a write fails (a CRLF
      // between requests, which HTTP ignores). The deadline is a guard: without the fix they stay open for good.
      await until('the server closed every connection', () => stuck.every((s) => s.destroyed || (s.write('\r\n'), false)),
        { timeoutMs: DEADLINE_MS + 60_000, intervalMs: 250 });
      assert.equal(await healthz(port), 200);
    } finally {
      await admin.close();
    }
  });
});

describe('idle-crowd', () => {
  // Connections that ask nothing cannot keep the scraper out of the admin listener. Over admin.maxConnectionsPerIp
  // (8) or the listener's 64, a new connection used to be closed at once while the ones holding the slots sent
  // nothing, or a request a byte at a time, for up to the 10 s header timeout, and were opened again as each was
  // cut: on loopback every local user shares 127.0.0.1, so any of them kept a Prometheus on 127.0.0.1 out for good.
  // Now the connection that has gone longest without progress is closed for the new one; one whose request is
  // being answered never is (then the new one is closed unanswered, as before).
  function tracked(sockets: net.Socket[]): () => number[] {
    const closedAt: number[] = [];
    sockets.forEach((s, i) => s.once('close', () => closedAt.push(i)));
    return () => [...closedAt].sort((a, b) => a - b);
  }

  test('an address at its cap with silent and half-sent connections: a scrape from it is answered; the oldest of them is closed for it', async () => {
    const events: string[] = [];
    const admin = await startAdminServer('127.0.0.1:0', { readiness: async () => ({}), status: async () => ({}) }, {
      maxConnectionsPerIp: 8, ipv6PrefixLength: 64,
      refused: (client) => events.push(`refused ${client}`), madeRoom: (client) => events.push(`made room ${client}`),
    });
    const held: net.Socket[] = [];
    try {
      const port = admin.address.port;
      for (let i = 0; i < 8; i++) {
        const s = await rawHttp(port, '127.0.4.1');
        if (i % 2 === 1) s.write('GET /metr'); // a request line begun, never ended
        held.push(s);
      }
      const closedOnes = tracked(held);
      assert.match(await getFrom(port, '127.0.4.1', '/metrics'), /^HTTP\/1\.1 200 /, 'the scrape is answered');
      await until('the oldest held connection closed', () => closedOnes().length > 0);
      assert.deepEqual(closedOnes(), [0], 'only the oldest, not by a timeout');
      assert.match(await getFrom(port, '127.0.4.1', '/healthz'), /^HTTP\/1\.1 200 /, 'and again');
      assert.deepEqual(events, ['made room 127.0.4.1'], 'logged once for the episode');
    } finally {
      for (const s of held) s.destroy();
      await admin.close();
    }
  });

  test('an address at its cap with every connection being answered: a new one from it is closed unanswered; another address is answered', async () => {
    const events: string[] = [];
    let asked = 0;
    let release!: () => void;
    const released = new Promise<void>((resolve) => { release = resolve; });
    const admin = await startAdminServer('127.0.0.1:0', {
      readiness: async (listener) => { if (listener?.startsWith('slow')) { asked++; await released; } return {}; },
      status: async () => ({}),
    }, { maxConnectionsPerIp: 8, ipv6PrefixLength: 64, refused: (client) => events.push(`refused ${client}`), madeRoom: (client) => events.push(`made room ${client}`) });
    const held: net.Socket[] = [];
    try {
      const port = admin.address.port;
      const answers: string[] = [];
      for (let i = 0; i < 8; i++) {
        const s = await rawHttp(port, '127.0.4.2');
        answers.push('');
        s.on('data', (d: Buffer) => { answers[i] += d.toString('latin1'); });
        s.write(`GET /readyz?listener=slow${i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`); // one check each (a listener each)
        held.push(s);
      }
      await until('the 8 requests being answered', () => asked === 8);
      const closedOnes = tracked(held);
      assert.equal(await getFrom(port, '127.0.4.2', '/healthz'), '', 'closed unanswered');
      assert.match(await getFrom(port, '127.0.4.3', '/healthz'), /^HTTP\/1\.1 200 /, 'another address is answered');
      assert.deepEqual(closedOnes(), [], 'none closed for it');
      release();
      await until('the 8 answered', () => answers.every((a) => /^HTTP\/1\.1 200 /.test(a)));
      assert.deepEqual(events, ['refused 127.0.4.2']);
    } finally {
      release();
      for (const s of held) s.destroy();
      await admin.close();
    }
  });

  test(`the listener full (${MAX_CONNECTIONS} silent connections of 16 addresses): a scrape from another address is answered; the oldest is closed for it`, async () => {
    const admin = await startAdminServer('127.0.0.1:0', { readiness: async () => ({}), status: async () => ({}) }, { maxConnectionsPerIp: 8, ipv6PrefixLength: 64 });
    const crowd: net.Socket[] = [];
    try {
      const port = admin.address.port;
      for (let i = 0; i < MAX_CONNECTIONS; i++) crowd.push(await rawHttp(port, `127.0.5.${1 + (i % 16)}`));
      const closedOnes = tracked(crowd);
      assert.match(await getFrom(port, '127.0.5.99', '/metrics'), /^HTTP\/1\.1 200 /);
      await until('the oldest of the crowd closed', () => closedOnes().length > 0);
      assert.deepEqual(closedOnes(), [0]);
    } finally {
      for (const s of crowd) s.destroy();
      await admin.close();
    }
  });
});

describe('metrics', () => {
  // The admin listener as Prometheus and a load balancer use it, scraped with curl over HTTP: counters move by
  // exactly what a run with STARTTLS, client certificates, scripts, a refusal, a script failure and a
  // delivery did; /healthz and /readyz answer (that every metric is documented: test/metrics/metrics.test.ts).
  const curl = promisify(execFile);
  let pki: TestPki;
  let sink: Sink;
  let s: DeliveryServer;

  before(async () => {
    pki = await makeTestPki();
    sink = await startSink();
    s = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test',
        localDomains: ['example.test'],
        admin: { listen: '127.0.0.1:0' },
        listeners: [testListener('mx', { tls: testServerTls(pki, { clientCertificates: 'request' }) }), testListener('submission')],
        delivery: smarthostDelivery(sink.port),
      }),
      scripts: {
        'rcptto.ts': `export default function rcptto(ctx: RcptToContext): Verdict | void {
  if (ctx.address.address.startsWith('nobody@')) return reject('No such user here');
  if (ctx.address.address.startsWith('broken@')) throw new Error('script bug');
}`,
      },
    });
  });
  after(async () => {
    await s?.stop();
    await sink?.close();
  });

  const scrape = (): Promise<Map<string, number>> => scrapeMetrics(s.admin!.address.port);

  function delta(before: Map<string, number>, after: Map<string, number>, sample: string): number {
    return (after.get(sample) ?? 0) - (before.get(sample) ?? 0);
  }

  test('counters move by what one TLS session with a client certificate, scripts and a delivery did', async () => {
    const start = await scrape();
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello({ starttls: await clientTlsOptions(pki, 'alice') });
    assert.equal((await c.command('MAIL FROM:<alice@example.net>')).code, 250);
    assert.equal((await c.command('RCPT TO:<nobody@example.test>')).code, 550);
    assert.equal((await c.command('RCPT TO:<broken@example.test>')).code, 451);
    assert.equal((await c.command('RCPT TO:<someone@example.test>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    assert.equal((await c.command('Subject: metrics\r\n\r\nhello\r\n.')).code, 250);
    await c.quit();
    await sink.waitFor(1);
    await s.nextAttempt((e) => e.removed, { past: true });
    const end = await scrape();

    assert.equal(delta(start, end, 'postern_smtp_connections_total{listener="mx"}'), 1);
    assert.equal(delta(start, end, 'postern_tls_handshakes_total{listener="mx",protocol="TLSv1.3",client_certificate="verified"}'), 1);
    assert.equal(delta(start, end, 'postern_script_verdicts_total{listener="mx",hook="rcptto",verdict="reject",generation="' + s.runtime.generation.serial + '",source="smtp"}'), 1);
    assert.equal(delta(start, end, 'postern_script_verdicts_total{listener="mx",hook="rcptto",verdict="failed",generation="' + s.runtime.generation.serial + '",source="smtp"}'), 1);
    assert.equal(delta(start, end, 'postern_script_failures_total{hook="rcptto",kind="error",source="smtp"}'), 1);
    assert.equal(delta(start, end, 'postern_script_call_duration_seconds_count{hook="rcptto"}'), 3);
    assert.equal(delta(start, end, 'postern_messages_accepted_total{listener="mx"}'), 1);
    assert.ok(delta(start, end, 'postern_message_bytes_total') > 20);
    assert.equal(delta(start, end, 'postern_spool_commit_duration_seconds_count'), 1);
    assert.equal(delta(start, end, `postern_deliveries_total{result="sent",next_hop="127.0.0.1:${sink.port}"}`), 1,
      [...end.keys()].filter((k) => k.startsWith('postern_deliveries')).join('\n'));
    assert.equal(end.get('postern_queue_messages'), 0);
    assert.equal(end.get('postern_config_generation'), s.runtime.generation.serial);

    // The same run in the log: one line for the accepted message, one for its delivery (Postfix-style).
    const accepted = s.logs.find((l) => String(l.msg).includes('(message spooled)'))!;
    assert.deepEqual(accepted.to, ['someone@example.test']);
    assert.match(String(accepted.certificate), /^[0-9a-f]{64}$/, 'the client certificate\'s SHA-256');
    assert.match(String(accepted.msg), /^\w+: accepted from=<alice@example\.net>, size=\d+, nrcpt=1, client=[\w.-]+\[127\.0\.0\.1\] \(message spooled\)$/);
    const sent = s.logs.find((l) => l.status === 'sent' && l.id === accepted.id)!;
    assert.equal(sent.attempt, 1);
    assert.equal(typeof sent.delay, 'number');
    assert.match(String(sent.msg), new RegExp(`^${accepted.id}: to=<someone@example\\.test>, relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${sink.port}, delay=[\\d.]+, attempt=1, tls=none, client_certificate=none, status=sent \\(250 `));
  });

  test('a port-25 listener\'s refusals and verdicts are told apart from a submission listener\'s (the listener label)', async () => {
    const start = await scrape();
    const serial = s.runtime.generation.serial;
    const c = await SmtpTestClient.connect(s.port('submission'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<alice@example.net>')).code, 250);
    assert.equal((await c.command('RCPT TO:<nobody@example.test>')).code, 550);
    await c.quit();
    const end = await scrape();
    const refusal = (listener: string): string => `postern_smtp_refusals_total{listener="${listener}",stage="RCPT",class="5xx",reason="script rcptto: reject"}`;
    const verdict = (listener: string): string => `postern_script_verdicts_total{listener="${listener}",hook="rcptto",verdict="reject",generation="${serial}",source="smtp"}`;
    assert.equal(delta(start, end, refusal('submission')), 1);
    assert.equal(delta(start, end, refusal('mx')), 0);
    assert.equal(delta(start, end, verdict('submission')), 1);
    assert.equal(delta(start, end, verdict('mx')), 0);
  });

  test('/metrics passes promtool check metrics: format and naming (what a scrape of Prometheus and its lint accept)', needs('promtool'), async () => {
    const { stdout } = await curl('curl', ['-sf', `http://127.0.0.1:${s.admin!.address.port}/metrics`]);
    assert.match(stdout, /^postern_spool_commit_duration_seconds_bucket\{le="\+Inf"\} [1-9]/m, 'after traffic: histograms with observations');
    const r = spawnSync('promtool', ['check', 'metrics'], { input: stdout, encoding: 'utf8' });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  });

  test('/healthz and /readyz answer; a refused reload leaves the server ready (the previous generation takes mail), with the reason in /readyz and the gauge at 1', async () => {
    const base = `http://127.0.0.1:${s.admin!.address.port}`;
    assert.equal((await curl('curl', ['-sf', `${base}/healthz`])).stdout, 'ok\n');
    const ready = JSON.parse((await curl('curl', ['-sf', `${base}/readyz`])).stdout) as { ready: boolean };
    assert.equal(ready.ready, true);

    const config = `${s.dir}/postern.yaml`;
    const good = await readFile(config, 'utf8');
    const { writeFile } = await import('node:fs/promises');
    await writeFile(config, good + '\nnot a key: [\n');
    const refused = await s.reloader.reload('test');
    assert.equal(refused.ok, false);
    // A load balancer checking /readyz keeps sending mail: the same edit on every node would otherwise take them all out.
    const stillReady = await curl('curl', ['-s', '-w', '\n%{http_code}', `${base}/readyz`]);
    const [body, , code] = stillReady.stdout.split('\n'); // the body ends with its newline
    assert.equal(code, '200', stillReady.stdout);
    const readiness = JSON.parse(body!) as { ready: boolean; checks: { reload: { ok: boolean; detail?: string } } };
    assert.equal(readiness.ready, true);
    assert.match(readiness.checks.reload.detail ?? '', /^last reload refused, the previous configuration serves: /);
    const client = await SmtpTestClient.connect(s.port('mx'));
    await client.hello();
    assert.equal((await client.sendMail('a@example.net', ['someone@example.test'])).code, 250, 'the previous generation takes mail');
    await client.quit();
    const failedGauge = await scrape();
    assert.equal(failedGauge.get('postern_config_last_reload_failed'), 1);

    await writeFile(config, good);
    // A reload the watcher started for the broken write may still be running: reload() then answers its outcome.
    await until('a reload of the fixed file', async () => (await s.reloader.reload('test')).ok);
    const fixed = JSON.parse((await curl('curl', ['-sf', `${base}/readyz`])).stdout) as { checks: { reload: { detail?: string } } };
    assert.equal(fixed.checks.reload.detail, undefined, 'the reason goes with the fix');
  });

  test('a request sent slowly is answered 408 and closed; beyond 64 connections a new one is answered, the oldest idle one closed for it', { timeout: 120_000 }, async () => {
    const port = s.admin!.address.port;
    const connect = async (localAddress = '127.0.0.1'): Promise<net.Socket> => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress });
      socket.on('error', () => undefined);
      await once(socket, 'connect');
      return socket;
    };
    const slow = await connect();
    let reply = '';
    slow.on('data', (d: Buffer) => { reply += d.toString(); });
    slow.write('GET /metrics HTTP/1.1\r\n');
    const drip = setInterval(() => { if (!slow.destroyed) slow.write('X-Slow: 1\r\n'); }, 500);
    await closed(slow);
    clearInterval(drip);
    assert.match(reply, /^HTTP\/1\.1 408 /);

    // 16 addresses with 4 each: none over its own cap (admin.maxConnectionsPerIp, 8), the listener full.
    const crowd: net.Socket[] = [];
    for (let i = 0; i < 64; i++) crowd.push(await connect(`127.0.1.${1 + (i % 16)}`));
    const crowdClosed: number[] = [];
    crowd.forEach((c, i) => c.once('close', () => crowdClosed.push(i)));
    assert.equal((await curl('curl', ['-s', '--interface', '127.0.1.99', `http://127.0.0.1:${port}/healthz`])).stdout, 'ok\n');
    await until('the oldest of the crowd closed for it', () => crowdClosed.length > 0);
    assert.deepEqual(crowdClosed, [0], 'the oldest alone, not by a timeout');
    for (const c of crowd) c.destroy();
  });

  test('beyond admin.maxConnectionsPerIp (8) idle connections from one address a request from it is answered, the oldest closed for it; other addresses are answered', { timeout: 120_000 }, async () => {
    await assertAdminCapMakesRoom(s.admin!.address.port, { limit: 8, address: '127.0.2.1', other: '127.0.2.2', path: '/healthz' });
    const warned = s.logs.filter((l) => l.msg === ADMIN_MADE_ROOM);
    assert.deepEqual(warned.map((l) => [l.client, l.limit]), [['127.0.2.1', 8]], 'one warning for the episode');
  });
});

describe('security-headers', () => {
  // The admin listener's answers as a browser on the management network would take them (curl -i, a real client):
  // every answer — 200s, 404, 405, 421 and 500 alike — says nosniff (a text/plain body is never run as a script or
  // styles), no-store (a proxy or the browser's cache keeps no copy of /status, /metrics: accounts, devices, errors),
  // may not be framed, and loads nothing (a CSP of default-src 'none'). Before, only cache-control was sent,
  // and not on the refusal of a HEAD/POST or a failure.
  const run = promisify(execFile);
  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      config: configYaml({
        hostname: 'mail.example.com',
        localDomains: ['example.com'],
        admin: { listen: '127.0.0.1:0' },
        listeners: [testListener('mx', { tls: { mode: 'none' } })],
      }),
    });
  });
  after(() => s?.stop());

  /** The status code and headers (lowercase names) of `curl -i` on `path`. */
  async function headersOf(path: string, extra: string[] = []): Promise<{ status: number; headers: Map<string, string> }> {
    const { stdout } = await run('curl', ['-sS', '-i', ...extra, `http://127.0.0.1:${s.admin!.address.port}${path}`]);
    const [statusLine, ...lines] = stdout.split('\r\n\r\n')[0]!.split('\r\n');
    const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
    return { status: Number(statusLine!.split(' ')[1]), headers };
  }

  test('every answer of the admin listener carries nosniff, no-store, no framing and a CSP that loads nothing', async () => {
    const asks: [string, string[], number][] = [
      ['/healthz', [], 200], ['/metrics', [], 200], ['/status', [], 200], ['/readyz', [], 200],
      ['/nothing-here', [], 404], ['/readyz?listener=nope', [], 404], ['/status', ['-X', 'POST'], 405],
      ['/status', ['-H', 'Host: attacker.example'], 421],
    ];
    for (const [path, extra, status] of asks) {
      const r = await headersOf(path, extra);
      const what = `${extra.join(' ')} ${path}`;
      assert.equal(r.status, status, what);
      assert.equal(r.headers.get('x-content-type-options'), 'nosniff', what);
      assert.equal(r.headers.get('cache-control'), 'no-store', what);
      assert.equal(r.headers.get('x-frame-options'), 'DENY', what);
      assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'none'.*frame-ancestors 'none'/, what);
      assert.equal(r.headers.get('referrer-policy'), 'no-referrer', what);
    }
  });

  test('a method other than GET or HEAD gets 405 with the Allow header RFC 9110 requires of it', async () => {
    for (const method of ['POST', 'PUT', 'DELETE', 'OPTIONS']) {
      const r = await headersOf('/status', ['-X', method]);
      assert.equal(r.status, 405, method);
      assert.equal(r.headers.get('allow'), 'GET, HEAD', method);
    }
  });
});

// A crowd of concurrent /metrics (or /status) requests: each gathered every process's registry (under `postern
// serve` a round trip to each worker, which serializes its metrics: 60 concurrent scrapers took ~10% of each
// worker's CPU, the supervisor's ~30%). Now one gathering at a time, shared by the requests made meanwhile.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startAdminServer, GATHER_GAP_MS } from '../../engine/admin/admin-server.ts';

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

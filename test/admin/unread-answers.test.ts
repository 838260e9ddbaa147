// A client of the admin listener that pipelines requests and never reads the answers: once the socket buffers
// were full the server could write no more and read no more, and no timeout applied (the requests were whole,
// the connection not idle), so the connection was held for good. On loopback every local client shares one
// address: admin.maxConnectionsPerIp (8) such connections from any local user kept the Prometheus scrape out
// until a restart. Each answer now has RESPONSE_DEADLINE_MS to leave; then the connection is closed. Here the server's
// deadline is DEADLINE_MS rather than the product's 30 s, waited out idle: the fault is "for good", not 30 s.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import { once } from 'node:events';
import { startAdminServer } from '../../engine/admin/admin-server.ts';
import { until } from '../helpers/wait.ts';

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

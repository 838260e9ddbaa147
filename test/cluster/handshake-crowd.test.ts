// A crowd of TLS handshakes is work, not a hang. libuv runs every ready I/O callback of a poll before the
// timers again, and each handshake signs with the server's key (an RSA-4096 signature is milliseconds): 500
// handshakes arriving together held a worker's heartbeat timer back for seconds, and its watchdog killed it
// as hung ("worker 0 hung: killing it"), ending every session on it — a crowd of clients within the
// per-address limits could do that at will. The hang checks now also look at whether the main thread still
// makes read and write calls (engine/cluster/thread-progress.ts); a thread stuck in a script's builtin makes
// none (test/cluster/crash.test.ts still sees it killed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { startCluster, workerPid } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { createCertificateAuthority, issueServerCertificate } from '../../engine/certificates/pki.ts';

const CLIENTS = 1000;
const ADDRESSES = 25; // 40 each: within the default maxConnectionsPerIp (50)

test('1000 TLS handshakes at once (RSA-4096 server key): the worker is busy, not hung; nobody is killed and it serves after', { timeout: 180_000 }, async () => {
  const ca = await createCertificateAuthority({ commonName: 'Crowd CA', keyType: 'ecdsa' });
  const server = await issueServerCertificate(ca, { commonName: 'localhost', keyType: 'rsa', rsaBits: 4096, dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1000, tlsHandshakeTimeoutMs: 170000 }
    tls: { mode: implicit, cert: server.pem, key: server.key }
`,
    files: { 'server.pem': server.cert, 'server.key': server.key },
  });
  try {
    const pid = await workerPid(c, 0);
    const port = c.port('in');
    // Every connection open first, then every handshake started at once: the ClientHellos reach the worker together.
    // (The handshake timeout above is the test's own limit: 1000 RSA-4096 signatures on a loaded 2-core machine can take
    // longer than the default 10 s for the last of them, which is the timeout working, not the worker hanging.)
    const raw = await Promise.all(Array.from({ length: CLIENTS }, async (_, i) => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress: `127.0.6.${1 + (i % ADDRESSES)}` });
      socket.on('error', () => undefined);
      await once(socket, 'connect');
      return socket;
    }));
    const outcomes = await Promise.all(raw.map((socket) => new Promise<string>((resolve) => {
      const s = tls.connect({ socket, ca: ca.cert, servername: 'localhost' });
      s.once('secureConnect', () => resolve('secure'));
      s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    })));
    for (const s of raw) s.destroy();
    const secured = outcomes.filter((o) => o === 'secure').length;
    assert.equal(secured, CLIENTS, `every handshake completed: ${JSON.stringify(outcomes.filter((o) => o !== 'secure').slice(0, 5))}`);
    const killed = c.logs.filter((l) => /hung|stopped answering|died/.test(String(l.msg)));
    assert.deepEqual(killed.map((l) => l.msg), [], 'no process was killed or died');
    const worker = (await c.cluster()).processes.find((p) => p.role === 'worker')!;
    assert.deepEqual([worker.pid, worker.restarts], [pid, 0], 'the same worker, never restarted');
    const ordinary = await SmtpTestClient.connect(port, { implicitTls: { ca: ca.cert, servername: 'localhost' } });
    await ordinary.hello();
    const r = await ordinary.sendMail('sender@example.test', ['user@example.test']);
    assert.equal(r.code, 250, r.text);
    await ordinary.quit();
  } finally {
    await c.stop();
  }
});

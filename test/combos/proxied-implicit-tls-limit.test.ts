/**
 * A site's submissions port as deployed: `postern serve` (two workers round robin; one under fill) behind a load balancer that sends
 * PROXY v2, implicit TLS with client certificates, and maxConnectionsPerIp, for IPv6 clients counted by their
 * /64. One connection over the limit must be told why (421 after the handshake, as without the balancer and
 * as a connection the workers accept themselves), and the log must give the client's real count: the worker
 * asked the supervisor for a slot "under the limit", got only a no, closed the connection before TLS without
 * a reply and logged it as over twice the limit with a made-up count (2 × limit + 1). The script sees the
 * client the header names, with its certificate.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startCluster, ROUND_ROBIN, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { proxyV2 } from '../helpers/proxy-header.ts';

const TOO_MANY_CONNECTIONS = '421 4.7.0 Too many connections from your address';

// Fill keeps an idle server's connections on its first worker: one worker there shows the same (its slots still by the supervisor's count).
for (const [choice, how, workers] of [[ROUND_ROBIN, 'round robin', 2], ['', 'workerChoice fill', 1]] as const) {
  test(`postern serve (${how}), PROXY v2 + implicit TLS: one over maxConnectionsPerIp reads its 421 after the handshake, not closed before TLS as if over twice the limit`, { timeout: 120_000 }, async () => {
    const pki = await makeTestPki();
    const ca = await readFile(pki.ca.cert, 'utf8');
    const alice = { ca, cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
    const c: ClusterProcess = await startCluster({
      config: `
workers: ${workers}
${choice}
localDomains: [example.test]
listeners:
  - name: smtps
    listen: 127.0.0.1:{PORT:smtps}
    reverseDns: false
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    proxyProtocol: { trusted: [127.0.0.0/8] }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
`,
      scripts: { 'connect.ts': 'export default (ctx) => { log("connect from " + ctx.connection.remoteAddress + " as " + ctx.connection.clientCertificate?.subject.CN); };' },
    });
    const open: SmtpTestClient[] = [];
    const connect = (address: string, port: number): Promise<SmtpTestClient> =>
      SmtpTestClient.connect(c.port('smtps'), { proxyHeader: proxyV2(address, port, { destination: '2001:db8::25', destinationPort: 465 }), implicitTls: alice });
    try {
      for (const [i, address] of ['2001:db8:7::1', '2001:db8:7::2'].entries()) {
        const client = await connect(address, 4000 + i);
        assert.match((await client.read()).text, /^220 /);
        open.push(client);
      }
      // A third address of the same /64: over the limit by one, it gets the reason after its handshake.
      const third = await connect('2001:db8:7::3', 4002);
      open.push(third);
      assert.equal((await third.read()).text, TOO_MANY_CONNECTIONS);
      const line = await c.waitFor('the refusal logged', () => c.logs.find((l) => l.reason === 'limits.maxConnectionsPerIp' && JSON.stringify(l).includes('2001:db8:7::3')));
      assert.equal(`${line.code} ${line.enhanced} ${line.reply}`, TOO_MANY_CONNECTIONS, JSON.stringify(line));
      // Refused with its reason, not closed as if over twice the limit (logged so with a made-up count of 5).
      assert.ok(!c.logs.some((l) => /closed before TLS/.test(String(l.msg))), JSON.stringify(c.logs.find((l) => /closed before TLS/.test(String(l.msg)))));
      // Another /64 through the same balancer is let in.
      const elsewhere = await connect('2001:db8:8::1', 4005);
      assert.match((await elsewhere.read()).text, /^220 /);
      open.push(elsewhere);
      await c.waitFor('the script to see the client and its certificate', () => c.logs.some((l) => l.msg === 'connect from 2001:db8:8::1 as alice'));
    } finally {
      for (const client of open) client.destroy();
      await c.stop();
    }
  });
}

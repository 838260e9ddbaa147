// Outbound TLS against hostile or misconfigured next hops: what name is sent and checked, what a failed or
// stripped STARTTLS does to a message whose route requires TLS, and which certificate each connection presents.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

let pki: TestPki;
let sink: Sink;
let s: DeliveryServer;

before(async () => {
  pki = await makeTestPki();
  // Its certificate names localhost and 127.0.0.1; it asks for (and records) a client certificate.
  sink = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert });
  const verify = { mode: 'verify', ca: 'test-ca' };
  const routes: Record<string, unknown> = {
    'sni-ip.example': { host: '127.0.0.1', port: sink.port, tls: { ...verify, serverName: '127.0.0.1' } },
    'sni-other-ip.example': { host: '127.0.0.1', port: sink.port, tls: { ...verify, serverName: '127.0.0.2' } },
  };
  s = await startDeliveryServer({
    files: { 'alice.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'alice.key': await readFile(pki.clients.alice.key, 'utf8') },
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        route: { smarthost: { host: '127.0.0.1', port: sink.port } }, retrySchedule: [3600], connectTimeoutMs: 10_000,
        caFiles: { 'test-ca': pki.ca.cert },
        clientCertificates: { alice: { cert: './alice.crt', key: './alice.key' } },
      },
    }),
    scripts: {
      'rcptto.ts': 'export default () => accept();',
      'predelivery.ts': `
const ROUTES: Record<string, PredeliveryVerdict> = ${JSON.stringify(routes)};
export default (ctx: PredeliveryContext) => ROUTES[ctx.destination.domain] ? deliver(ROUTES[ctx.destination.domain] as never) : undefined;
`,
    },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

/** Send to r@<domain>; the first attempt's outcome and what the next hop received for it. */
async function attempt(domain: string): Promise<{ status: string; reply: string; received: Sink['messages'][number] | undefined }> {
  const id = await s.send('sender@example.org', [`r@${domain}`]);
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  return { status: e.outcomes[0]!.status, reply: e.outcomes[0]!.reply, received: sink.messages.find((m) => m.to[0] === `r@${domain}`) };
}

test('a serverName that is an IP address is checked against the certificate, and never sent as SNI', async () => {
  const r = await attempt('sni-ip.example');
  assert.equal(r.status, 'delivered', r.reply);
  assert.equal(r.received?.tls, true);
  assert.equal(r.received?.servername, null, 'RFC 6066 §3: no literal IP address in SNI');
  // The name checked is the one the script gave, not the address connected to (which the certificate does name).
  const other = await attempt('sni-other-ip.example');
  assert.equal(other.status, 'temporary', other.reply);
  assert.match(other.reply, /TLS failed: .*127\.0\.0\.2/);
  assert.equal(other.received, undefined);
});

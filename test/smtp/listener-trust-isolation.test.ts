// Listeners in one process, each with its own CA: a client certificate is judged by the listener it reaches only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { registry } from '../../engine/metrics/metrics.ts';

let pki: TestPki;
let server: TestServer;
const pem: Record<string, { cert: string; key: string }> = {};
let ca: string;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  for (const name of ['alice', 'stranger'] as const) pem[name] = { cert: await readFile(pki.clients[name].cert, 'utf8'), key: await readFile(pki.clients[name].key, 'utf8') };
  const tls = (mode: string, caFile: string): string => `{ mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${caFile}] }`;
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - { name: relay, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('starttls', pki.otherCa.cert)}, relayClientCertificates: true, limits: { greetingDelayMs: 0 } }
  - { name: sub, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('starttls', pki.ca.cert)}, auth: { mechanisms: [EXTERNAL, PLAIN] }, certificateIdentity: { field: emailAddress } }
  - { name: subs, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('implicit', pki.otherCa.cert)}, auth: { mechanisms: [EXTERNAL, PLAIN] }, certificateIdentity: { field: emailAddress } }
`,
  });
});
after(() => server.stop());

async function over(listener: string, who: 'alice' | 'stranger'): Promise<SmtpTestClient> {
  if (listener === 'subs') {
    const c = await SmtpTestClient.connect(server.port(listener), { implicitTls: { ca, ...pem[who] } });
    await c.hello();
    return c;
  }
  const c = await SmtpTestClient.connect(server.port(listener));
  await c.hello({ starttls: { ca, ...pem[who] } });
  return c;
}

test('each listener verifies against its own caFiles, whatever the order of clients on the others', async () => {
  for (let round = 0; round < 2; round++) {
    const aliceSub = await over('sub', 'alice');
    assert.match(aliceSub.transcript.join('\n'), /250[- ]AUTH EXTERNAL PLAIN/);
    assert.equal((await aliceSub.command('AUTH EXTERNAL =')).code, 235);
    aliceSub.destroy();
    // alice's CA is not the relay listener's: no relay, nor EXTERNAL on the implicit listener.
    const aliceRelay = await over('relay', 'alice');
    assert.equal((await aliceRelay.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await aliceRelay.command('RCPT TO:<x@elsewhere.example>')).code, 554);
    aliceRelay.destroy();
    const aliceSubs = await over('subs', 'alice');
    assert.doesNotMatch(aliceSubs.transcript.join('\n'), /AUTH[^\n]*EXTERNAL/);
    assert.notEqual((await aliceSubs.command('AUTH EXTERNAL =')).code, 235);
    aliceSubs.destroy();
    // The stranger (its CA is the relay's, its emailAddress alice's) relays there, and is nobody on sub.
    const strangerRelay = await over('relay', 'stranger');
    assert.equal((await strangerRelay.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await strangerRelay.command('RCPT TO:<x@elsewhere.example>')).code, 250);
    strangerRelay.destroy();
    const strangerSub = await over('sub', 'stranger');
    assert.doesNotMatch(strangerSub.transcript.join('\n'), /AUTH[^\n]*EXTERNAL/);
    assert.notEqual((await strangerSub.command('AUTH EXTERNAL =')).code, 235);
    strangerSub.destroy();
    const strangerSubs = await over('subs', 'stranger');
    assert.equal((await strangerSubs.command('AUTH EXTERNAL =')).code, 235);
    strangerSubs.destroy();
  }
  const handshakes = (await registry.getSingleMetric('postern_tls_handshakes_total')!.get()).values;
  const of = (listener: string, outcome: string): number => handshakes.filter((v) => v.labels.listener === listener && v.labels.client_certificate === outcome).reduce((a, v) => a + v.value, 0);
  assert.deepEqual([of('sub', 'verified'), of('relay', 'verified'), of('subs', 'verified')], [2, 2, 2], JSON.stringify(handshakes));
});

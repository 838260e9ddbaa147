// limits.idleWhenFullMs: a STARTTLS handshake that just completed is activity. Its client's next command is EHLO, a
// junk command (no activity), so the idle clock ran from the STARTTLS 220 through the whole handshake: a handshake
// that took longer than idleWhenFullMs (our CPU under load, a far client; here a ClientHello sent late stands in
// for it) had its client closed for a newcomer to the full listener between its EHLO and its MAIL FROM.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';

const IDLE_MS = 1500;
let server: TestServer;
let ca = '';

before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, tlsHandshakeTimeoutMs: 30000, idleWhenFullMs: ${IDLE_MS} }
`,
  });
});
after(() => server.stop());

test('a client whose STARTTLS handshake outlasted idleWhenFullMs is not idle once it completed', { timeout: 60_000 }, async () => {
  const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
  assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
  assert.equal((await holder.command('EHLO holder.example')).code, 250);
  await holder.starttls({ ca }, () => sleep(IDLE_MS * 1.5));
  assert.equal((await holder.command('EHLO holder.example')).code, 250, holder.transcript.join('\n'));

  const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
  assert.equal(holder.closed, false, holder.transcript.join('\n'));
  assert.equal((await holder.command('MAIL FROM:<a@sender.example>')).code, 250, holder.transcript.join('\n'));
  for (const c of [holder, newcomer]) c.destroy();
});

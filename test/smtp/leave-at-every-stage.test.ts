// A client that resets (RST) or half-closes (FIN) at every stage of a session, plain and inside STARTTLS, AUTH
// and DATA included: afterwards nothing of it is left — no per-address slot, no session, no bytes held for a
// message, no partial file — and the server still serves the next client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import type { LocalConnectionCounter } from '../../engine/smtp/postern-server.ts';

let server: TestServer;
let ca: string;

before(async () => {
  const pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [LOGIN] }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(() => server.stop());

type Stage = { name: string; go(c: SmtpTestClient): Promise<void> };

const mailUpTo = (c: SmtpTestClient, data: boolean) => async (): Promise<void> => {
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  if (data) assert.equal((await c.command('DATA')).code, 354);
};

const STAGES: Stage[] = [
  { name: 'before the greeting is read', go: async () => undefined },
  { name: 'after the greeting', go: async (c) => { await c.read(); } },
  { name: 'in the middle of a command', go: async (c) => { await c.read(); c.socket.write('EHLO half'); } },
  { name: 'after EHLO', go: async (c) => { await c.hello(); } },
  { name: 'after STARTTLS, before the ClientHello', go: async (c) => { await c.read(); await c.command('EHLO x'); assert.equal((await c.command('STARTTLS')).code, 220); } },
  { name: 'in the middle of the TLS handshake', go: async (c) => { await c.read(); await c.command('EHLO x'); await c.command('STARTTLS'); c.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); } },
  { name: 'inside TLS, in an AUTH LOGIN exchange', go: async (c) => { await c.hello({ starttls: { ca } }); assert.equal((await c.command('AUTH LOGIN')).code, 334); } },
  { name: 'inside TLS, after RCPT TO', go: async (c) => { await c.hello({ starttls: { ca } }); await mailUpTo(c, false)(); } },
  { name: 'inside TLS, in the middle of DATA', go: async (c) => { await c.hello({ starttls: { ca } }); await mailUpTo(c, true)(); c.socket.write('Subject: x\r\n\r\n' + 'y'.repeat(200_000)); } },
  { name: 'plain, in the middle of DATA', go: async (c) => { await c.hello(); await mailUpTo(c, true)(); c.socket.write('Subject: x\r\n\r\n' + 'y'.repeat(50_000)); } },
  { name: 'right after the final dot', go: async (c) => { await c.hello(); await mailUpTo(c, true)(); c.socket.write('Subject: x\r\n\r\nbody\r\n.\r\n'); } },
];

function openFrom(): number {
  return (server.servers.get('mx')!.connectionCounter as LocalConnectionCounter).count('127.0.0.1');
}

async function nothingLeft(what: string): Promise<void> {
  await until(`${what}: no slot, no session, no bytes held`, () =>
    openFrom() === 0 && server.servers.get('mx')!.connections.size === 0 && server.runtime.spool.heldBytes === 0);
  await until(`${what}: no partial file`, async () => (await readdir(server.runtime.spool.incomingDir)).length === 0);
}

for (const how of ['RST', 'FIN'] as const) {
  for (const stage of STAGES) {
    test(`${how} ${stage.name}: nothing is left behind`, async () => {
      const logged = server.logs.length;
      const c = await SmtpTestClient.connect(server.port('mx'));
      const tcp = c.socket; // under TLS too: the reset is the TCP connection's
      await stage.go(c);
      if (how === 'RST') tcp.resetAndDestroy();
      else c.socket.end();
      if (how === 'FIN') {
        assert.ok(await c.waitClosed(30_000), 'the server closes its side after the client\'s FIN');
        // For the FIN itself: a handshake that can no longer complete was held until its deadline (10 s) and closed then.
        assert.ok(!server.logs.slice(logged).some((l) => l.msg === 'STARTTLS handshake not completed in time: closed'), 'closed for the FIN, not at the handshake deadline');
      }
      await nothingLeft(`${how} ${stage.name}`);
    });
  }
}

test('after all of them, a client is served as usual', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello({ starttls: { ca } });
  assert.equal((await c.sendMail('a@example.com', ['b@example.com'])).code, 250);
  await c.quit();
  await nothingLeft('a normal session');
});

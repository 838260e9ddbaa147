// Connections that ask nothing cannot keep Postfix out of the policy service. At limits.maxConnections a new
// connection was closed at once while idle connections (or ones dripping a request) held every slot for
// idleTimeoutMs (330 s), opened again as each was cut: the protocol has no authentication, and on loopback
// any local user did this, so Postfix's new smtpd processes met a closed connection and applied their
// default_action (451 4.3.5) to all mail. Now a new connection over the limit closes this process's
// connection that has gone longest without progress, silent ones first (closing-order.ts) (accepted, a request read, an answer written; Postfix
// reconnects and sends its request again when it finds its idle connection closed), and one being answered
// never; with none to close, the new one is closed as before.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { until } from '../helpers/wait.ts';
import { PolicyClient, rcptRequest, requestText } from './helpers/policy-client.ts';

let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: `
localDomains: [example.org]
policyServices:
  - { name: postfix, listen: '127.0.0.1:0', limits: { maxConnections: 4 } }
`,
  });
});
after(() => s?.stop());

const port = (): number => Number(s.policyAddresses.get('postfix')!.split(':').pop());

async function silent(): Promise<net.Socket> {
  const socket = net.connect(port(), '127.0.0.1');
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return socket;
}

test('the service full of idle and half-sent connections: Postfix\'s new connection is answered; the oldest idle one is closed for it', async () => {
  const held: net.Socket[] = [];
  for (let i = 0; i < 4; i++) {
    const c = await silent();
    if (i % 2 === 1) c.write('request=smtpd_access_policy\nprotocol_state=RCPT\n'); // a request begun, never ended
    held.push(c);
  }
  const closedOnes: number[] = [];
  held.forEach((h, i) => h.once('close', () => closedOnes.push(i)));
  try {
    // The service has them all (each counted) before the next comes.
    await until('4 connections open', () => s.policyServers.get('postfix')!.connections === 4);
    const postfix = await PolicyClient.connect({ port: port() });
    postfix.send(requestText(rcptRequest({ recipient: 'x@example.org' })));
    assert.equal(await Promise.race([postfix.closed.then(() => 'closed unanswered'), postfix.next()]), 'action=DUNNO');
    await until('the oldest held closed for it', () => closedOnes.length > 0);
    assert.deepEqual(closedOnes, [0], 'the oldest alone, not by a timeout');
    assert.equal(s.logs.filter((l) => l.msg === 'policy service: too many connections, the one idle longest closed for each new one').length, 1);
    postfix.close();
  } finally {
    for (const h of held) h.destroy();
  }
  await until('the service empty', () => s.policyServers.get('postfix')!.connections === 0);
});

test('silent connections opened after Postfix\'s idle ones are closed first: a flood of them does not cut Postfix off', async () => {
  // Two Postfix connections that asked and got their answers (idle now), then two that never send a byte.
  const postfix = [await PolicyClient.connect({ port: port() }), await PolicyClient.connect({ port: port() })];
  for (const p of postfix) {
    p.send(requestText(rcptRequest({ recipient: 'x@example.org' })));
    assert.equal(await p.next(), 'action=DUNNO');
  }
  const held = [await silent(), await silent()];
  await until('4 connections open', () => s.policyServers.get('postfix')!.connections === 4);
  // Each new silent connection closes a silent one, never a Postfix connection that has made progress.
  const flood: net.Socket[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      flood.push(await silent());
      await until('back at 4', () => s.policyServers.get('postfix')!.connections === 4);
    }
    for (const p of postfix) {
      p.send(requestText(rcptRequest({ recipient: 'y@example.org' })));
      assert.equal(await Promise.race([p.closed.then(() => 'closed'), p.next()]), 'action=DUNNO');
    }
  } finally {
    for (const h of [...held, ...flood]) h.destroy();
    for (const p of postfix) p.close();
  }
  await until('the service empty', () => s.policyServers.get('postfix')!.connections === 0);
});

// limits.idleWhenFullMs measures the client's idleness, not ours: time a client spends waiting for our reply (a
// helo script waiting for DNS, here) is not time it held its slot doing nothing. The EHLO reply is a junk
// command's, so it does not count as activity; the wait before it did: a client whose helo verdict took longer than
// idleWhenFullMs was closed for a newcomer in the moment between reading its 250 and sending its MAIL FROM.
//
// The same for a message refused at its end after a long verdict (a content scan): the client's next transaction
// follows the refusal, and the wait for it was counted as its idleness.
//
// The holder's EHLO (or end-of-data) verdict comes after dns.timeoutMs (5 s); idleWhenFullMs is 2.5 s: the newcomer arrives right
// after the holder read its reply, the holder's own silence far below that.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { until } from '../helpers/wait.ts';

const DATA = `import type { DataContext } from "postern";
export default async function (ctx: DataContext) {
  await dns.resolve("data.held.test", "A"); // never answered
  return reject("content refused after a long scan", { code: 550 });
}
`;
const HELO = `import type { HeloContext } from "postern";
export default async function (ctx: HeloContext) {
  if (ctx.helo.name === "slow.example") await dns.resolve("helo.held.test", "A"); // never answered
  return accept();
}
`;

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer({});
  dns.silent.add('helo.held.test');
  dns.silent.add('data.held.test');
  server = await startTestServer({
    config: `
localDomains: [example.com]
sandbox: { timeoutMs: 20000 }
dns: { servers: ["${dns.address}"], timeoutMs: 5000 }
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, idleWhenFullMs: 2500 }
`,
    scripts: { 'helo.ts': HELO, 'data.ts': DATA },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

test('a client whose helo verdict took longer than idleWhenFullMs is not idle once answered', { timeout: 60_000 }, async () => {
  const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
  assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
  assert.equal((await holder.command('EHLO slow.example')).code, 250, holder.transcript.join('\n'));
  assert.ok((dns.queries.get('A helo.held.test') ?? 0) > 0, 'the helo script waited for DNS');

  const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
  assert.equal(holder.closed, false, holder.transcript.join('\n'));
  assert.equal((await holder.command('MAIL FROM:<a@sender.example>')).code, 250, holder.transcript.join('\n'));
  assert.equal(server.logs.filter((l) => typeof l.reason === 'string' && l.reason.startsWith('limits.idleWhenFullMs')).length, 0);
  for (const c of [holder, newcomer]) c.destroy();
});

test('a client whose message was refused after a verdict longer than idleWhenFullMs is not idle once answered', { timeout: 60_000 }, async () => {
  await until('the listener empty', () => (server.servers.get('one') as unknown as { connections: Set<unknown> }).connections.size === 0);
  const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.4' });
  assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
  assert.equal((await holder.command('EHLO quick.example')).code, 250);
  const refused = await holder.sendMail('a@sender.example', ['b@example.com']);
  assert.equal(refused.code, 550, holder.transcript.join('\n'));
  assert.ok((dns.queries.get('A data.held.test') ?? 0) > 0, 'the data script waited for DNS');

  const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.5' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
  assert.equal(holder.closed, false, holder.transcript.join('\n'));
  assert.equal((await holder.command('MAIL FROM:<a@sender.example>')).code, 250, holder.transcript.join('\n'));
  for (const c of [holder, newcomer]) c.destroy();
});

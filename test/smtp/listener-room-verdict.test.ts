// A full listener closes a connection of the address holding the most for a client of an address holding fewer,
// never one whose client waits for us. A client whose message was received in full waits for its end-of-data
// verdict (the data hook, the spool's commit before the 250): closing it then cut its 250 into a 421, and a client
// that retries sends the message again. A client not yet greeted waits for its greeting (the connect hook, the
// reverse DNS lookup): it was closed first of all, as one that never sent a command, before connections idle
// for minutes. Here the hooks wait for a DNS answer that never comes (dns.timeoutMs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { until } from '../helpers/wait.ts';

const DATA = `import type { DataContext } from "postern";
export default async function (ctx: DataContext) {
  await dns.resolve("held.test", "A"); // never answered: the verdict comes after dns.timeoutMs
  return accept({ text: "taken after the lookup" });
}
`;

// Only 127.0.0.4's connections wait for their greeting.
const CONNECT = `import type { ConnectContext } from "postern";
export default async function (ctx: ConnectContext) {
  if (ctx.connection.remoteAddress === "127.0.0.4") await dns.resolve("held.test", "A");
}
`;

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer({});
  dns.silent.add('held.test');
  server = await startTestServer({
    config: `
localDomains: [example.com]
sandbox: { timeoutMs: 20000 }
# The hooks wait this long: the test acts well within it, however loaded the machine.
dns: { servers: ["${dns.address}"], timeoutMs: 8000 }
listeners:
  - name: pair
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 2, maxConnectionsPerIp: 2 }
`,
    scripts: { 'data.ts': DATA, 'connect.ts': CONNECT },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

async function inData(ip: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('pair'), { localAddress: ip });
  assert.equal((await c.read()).code, 220, c.transcript.join('\n'));
  assert.equal((await c.command('EHLO holder.example')).code, 250);
  assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  return c;
}

test('a client waiting for its end-of-data verdict is not closed for another client', { timeout: 60_000 }, async () => {
  const waiting = await inData('127.0.0.2');
  const sending = await inData('127.0.0.2'); // receiving its message: never closed either
  sending.socket.write('Subject: slow\r\n\r\nfirst line\r\n');
  waiting.socket.write('Subject: whole\r\n\r\nbody\r\n.\r\n');
  await until('the data hook asks DNS', () => (dns.queries.get('A held.test') ?? 0) > 0);

  const newcomer = await SmtpTestClient.connect(server.port('pair'), { localAddress: '127.0.0.3' });
  const answer = await newcomer.read();
  // Nobody may be closed for it: refused, as before the listener room.
  assert.match(answer.text, /^421 4\.7\.0 .*Too many connected clients/, newcomer.transcript.join('\n'));
  const verdict = await waiting.read();
  assert.equal(verdict.code, 250, waiting.transcript.join('\n'));
  assert.equal(sending.closed, false);
  for (const c of [waiting, sending, newcomer]) c.destroy();
});

test('a client waiting for its greeting is not the first closed for another client', { timeout: 60_000 }, async () => {
  const open = (): number => (server.servers.get('pair') as unknown as { connections: Set<unknown> }).connections.size;
  await until('the listener empty', () => open() === 0);
  const idle = await SmtpTestClient.connect(server.port('pair'), { localAddress: '127.0.0.4' });
  assert.equal((await idle.read()).code, 220, idle.transcript.join('\n'));
  assert.equal((await idle.command('EHLO holder.example')).code, 250);
  const queriesBefore = dns.queries.get('A held.test') ?? 0;
  const waiting = await SmtpTestClient.connect(server.port('pair'), { localAddress: '127.0.0.4' });
  await until('its connect hook asks DNS', () => (dns.queries.get('A held.test') ?? 0) > queriesBefore);

  const newcomer = await SmtpTestClient.connect(server.port('pair'), { localAddress: '127.0.0.5' });
  assert.equal((await newcomer.read()).code, 220, newcomer.transcript.join('\n'));
  // The idle one made room; the one waiting for its greeting gets it.
  assert.ok(await idle.waitClosed(), 'the idle connection closed');
  assert.equal((await waiting.read()).code, 220, waiting.transcript.join('\n'));
  for (const c of [idle, waiting, newcomer]) c.destroy();
});

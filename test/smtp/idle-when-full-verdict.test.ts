// limits.idleWhenFullMs closes, for a newcomer to a full listener, a connection idle in the command phase: never
// one whose client waits for us. Here every place is held by clients idle longer than idleWhenFullMs on the wire
// but waiting for a verdict (a MAIL hook, the data hook, each waiting for a DNS answer that never comes within
// dns.timeoutMs): the newcomer is refused as before, and nobody is closed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { until } from '../helpers/wait.ts';

const held = (name: string): string => `  await dns.resolve("${name}", "A"); // never answered: the verdict comes after dns.timeoutMs`;
const MAIL = `import type { MailFromContext } from "postern";
export default async function (ctx: MailFromContext) {
  if (ctx.address.address === "held@sender.example") {
${held('mail.held.test')}
  }
  return accept();
}
`;
const DATA = `import type { DataContext } from "postern";
export default async function (ctx: DataContext) {
${held('data.held.test')}
  return accept({ text: "taken after the lookup" });
}
`;

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer({});
  dns.silent.add('mail.held.test');
  dns.silent.add('data.held.test');
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
    limits: { greetingDelayMs: 0, maxConnections: 2, maxConnectionsPerIp: 1, idleWhenFullMs: 300 }
`,
    scripts: { 'mailfrom.ts': MAIL, 'data.ts': DATA },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

async function greeted(ip: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('pair'), { localAddress: ip });
  assert.equal((await c.read()).code, 220, c.transcript.join('\n'));
  assert.equal((await c.command('EHLO holder.example')).code, 250);
  return c;
}

test('clients waiting for a MAIL verdict or an end-of-data verdict are not idle: the newcomer is refused', { timeout: 60_000 }, async () => {
  const atData = await greeted('127.0.0.2');
  assert.equal((await atData.command('MAIL FROM:<a@sender.example>')).code, 250);
  assert.equal((await atData.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await atData.command('DATA')).code, 354);
  atData.socket.write('Subject: whole\r\n\r\nbody\r\n.\r\n');
  const atMail = await greeted('127.0.0.3');
  atMail.socket.write('MAIL FROM:<held@sender.example>\r\n');
  await until('both hooks ask DNS', () => ['A mail.held.test', 'A data.held.test'].every((q) => (dns.queries.get(q) ?? 0) > 0));
  await sleep(450); // past idleWhenFullMs since either sent anything

  const newcomer = await SmtpTestClient.connect(server.port('pair'), { localAddress: '127.0.0.4' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
  assert.deepEqual([atData.closed, atMail.closed], [false, false]);
  assert.equal(server.logs.filter((l) => typeof l.reason === 'string' && l.reason.startsWith('limits.idleWhenFullMs')).length, 0);
  for (const c of [atData, atMail, newcomer]) c.destroy();
});

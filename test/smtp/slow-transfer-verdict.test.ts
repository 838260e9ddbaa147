// A message that arrived slowly (below limits.minDataRate over its window) but whose final dot is in waits for its
// end-of-data verdict: a full listener must not close it for another client, since its client would read a 421 for
// a message it sent in full and send it again. Here the data hook waits for a DNS answer that never comes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
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

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer({});
  dns.silent.add('held.test');
  server = await startTestServer({
    config: `
localDomains: [example.com]
sandbox: { timeoutMs: 20000 }
# The hook waits this long: the test acts well within it, however loaded the machine.
dns: { servers: ["${dns.address}"], timeoutMs: 8000 }
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 20000, dataRateWindowMs: 1000 }
`,
    scripts: { 'data.ts': DATA },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

test('a slow message waiting for its end-of-data verdict is not closed for a newcomer on a full listener', { timeout: 60_000 }, async () => {
  const slow = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
  assert.equal((await slow.read()).code, 220);
  for (const [line, code] of [['EHLO slow.example', 250], ['MAIL FROM:<a@sender.example>', 250], ['RCPT TO:<b@example.com>', 250], ['DATA', 354]] as const) {
    assert.equal((await slow.command(line)).code, code, slow.transcript.join('\n'));
  }
  slow.socket.write('Subject: slow\r\n\r\n');
  await sleep(1500); // past the window: a few bytes in 1.5 s, far below the rate
  slow.socket.write('body\r\n.\r\n');
  await until('the data hook asks DNS', () => (dns.queries.get('A held.test') ?? 0) > 0);

  const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 .*Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
  assert.equal((await slow.read()).code, 250, slow.transcript.join('\n'));
  for (const c of [slow, newcomer]) c.destroy();
});

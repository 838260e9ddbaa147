/**
 * A name a client wrote reaches dns.resolve() as it is: a From header whose domain holds a NUL
 * (`evil.test<NUL>.x`) in an allow-list check `dns.resolve(domain + ".allow.test")` must not ask for the
 * client's own `evil.test` (c-ares stops at the NUL), whose owner answers as it likes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';

const DATA = `import type { DataContext } from "postern";
export default async function (ctx: DataContext) {
  const from = ctx.data.headers.find(([name]) => name.toLowerCase() === "from")?.[1] ?? "";
  const domain = from.slice(from.indexOf("@") + 1);
  const r = await dns.resolve(domain + ".allow.test", "A");
  if (r.ok && r.records.length > 0) return accept({ text: "allow-listed" });
  return reject("not allow-listed: " + (r.ok ? "no record" : r.error));
}
`;

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer({
    'good.test.allow.test': [{ type: 'A', value: '127.0.0.2' }],
    'evil.test': [{ type: 'A', value: '192.0.2.66' }], // the client's own zone
  });
  server = await startTestServer({
    config: `
localDomains: [example.com]
sandbox: { timeoutMs: 2000 }
dns: { servers: ["${dns.address}"], timeoutMs: 1000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
    scripts: { 'data.ts': DATA },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

test('a NUL in a header domain: the allow-list query is not cut to the client\'s own name', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.match((await c.sendMail('a@good.test', ['u@example.com'], 'From: a@good.test\r\n\r\nhi\r\n')).text, /^250 .*allow-listed/);
  const r = await c.sendMail('a@evil.test', ['u@example.com'], 'From: a@evil.test\0.x\r\n\r\nhi\r\n');
  assert.equal(r.text, '550 5.7.1 not allow-listed: badname');
  assert.equal(dns.queries.get('A evil.test'), undefined);
  await c.quit();
});

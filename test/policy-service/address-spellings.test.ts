// Postfix names a client as `192.0.2.66` or `2001:db8::66`; any other client of the service (or a Postfix
// passing on what a proxy header claimed) may write the same address as `::ffff:192.0.2.66`, `::FFFF:c000:242`
// or `2001:DB8:0:0::66`. Each is one client: scripts see one ctx.connection.remoteAddress (the key of their
// rate() calls and table lookups), a table entry finds it, and the log names it one way. Over a real socket.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { until } from '../helpers/wait.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: `
tables: { deny: ./deny }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: p, listen: 127.0.0.1:0 }
`,
    files: { deny: '192.0.2.66 REJECT\n2001:db8::66 REJECT\n' },
    scripts: { 'rcptto.ts': `export default (ctx) => reject([ctx.connection.remoteAddress, ctx.connection.localAddress, lookup('deny', ctx.connection.remoteAddress)].join(' '));` },
  });
});
after(() => s?.stop());

async function seen(attrs: Record<string, string>): Promise<string> {
  const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('p')!.split(':').pop()) });
  try {
    return (await c.ask(rcptRequest(attrs))).replace(/^action=\S+ (\S+ )?/, '');
  } finally {
    c.close();
  }
}

test('an IPv4 client written as an IPv4-mapped IPv6 address is the IPv4 client', async () => {
  for (const spelling of ['192.0.2.66', '::ffff:192.0.2.66', '::FFFF:c000:242', '0:0:0:0:0:ffff:192.0.2.66']) {
    assert.equal(await seen({ client_address: spelling, server_address: '::ffff:198.51.100.1' }), '192.0.2.66 198.51.100.1 REJECT', spelling);
  }
  await until('logged as the IPv4 client', () => s.logs.filter((l) => l.service === 'p' && l.client === '192.0.2.66').length >= 4);
  assert.ok(!s.logs.some((l) => l.service === 'p' && /ffff/i.test(String(l.client))), 'no mapped spelling in the log');
});

test('an IPv6 client in any case and compression is one client', async () => {
  for (const spelling of ['2001:db8::66', '2001:DB8:0:0::66', '2001:0db8:0000:0000:0000:0000:0000:0066']) {
    assert.equal(await seen({ client_address: spelling, server_address: '2001:DB8::1' }), '2001:db8::66 2001:db8::1 REJECT', spelling);
  }
});

/**
 * dns.resolve() and dnsbl() in policy scripts, against a DNS server run by the test (`dns.servers`): a
 * DNSBL check at connect keyed by the client address, an MX check at MAIL FROM, a failure as a result
 * (the script decides) and, with `{ throw: true }`, as a rejection that fails the hook closed; a name a client
 * wrote with a NUL in it is not cut there (an allow-list check asked for the client's own zone).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { parseConfig } from '../../engine/config/load-config.ts';

const CONNECT = `import type { ConnectContext } from "postern";
export default async function (ctx: ConnectContext) {
  const r = await dnsbl("bl.test", ctx.connection.remoteAddress);
  if (r.ok && r.listed) return reject("Listed in bl.test (" + r.codes.join(",") + ")");
}
`;
const MAILFROM = `import type { MailFromContext } from "postern";
export default async function (ctx: MailFromContext) {
  if (ctx.address.domain === "flood.test") {
    // One command must not become a thousand queries: past the allowance in flight, calls reject.
    let refused = 0;
    const all = [];
    for (let i = 0; i < 1000; i++) all.push(dns.resolve("q" + i + ".flood.test", "A").catch(() => { refused++; }));
    await Promise.all(all);
    return defer("refused " + refused);
  }
  if (ctx.address.domain === "strict.test") await dns.resolve("broken.test", "A", { throw: true });
  const mx = await dns.resolve(ctx.address.domain, "MX");
  if (!mx.ok) return defer("DNS " + mx.error + " for " + ctx.address.domain);
  if (mx.records.length === 0) return reject("No MX for " + ctx.address.domain + (mx.nxdomain ? " (no such domain)" : ""));
  return accept({ text: "Sender ok, MX " + mx.records[0].exchange });
}
`;

// An allow-list check on the From header's domain, which the client wrote (without a From, the body's first line).
const DATA = `import type { DataContext } from "postern";
export default async function (ctx: DataContext) {
  const from = ctx.data.headers.find(([name]) => name.toLowerCase() === "from")?.[1] ?? (await ctx.message.text(200)).split("\\r\\n")[0]!;
  const r = await dns.resolve(from.slice(from.indexOf("@") + 1) + ".allow.test", "A");
  if (r.ok && r.records.length > 0) return accept({ text: "allow-listed" });
  return reject("not allow-listed: " + (r.ok ? "no record" : r.error));
}
`;

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer({
    '2.0.0.127.bl.test': [{ type: 'A', value: '127.0.0.2' }],
    'good.test': [{ type: 'MX', value: { exchange: 'mx.good.test', priority: 10 } }, { type: 'A', value: '192.0.2.1' }],
    'nomx.test': [{ type: 'A', value: '192.0.2.2' }],
    'strict.test': [{ type: 'MX', value: { exchange: 'mx.strict.test', priority: 10 } }],
    'good.test.allow.test': [{ type: 'A', value: '127.0.0.2' }],
    'evil.test': [{ type: 'A', value: '192.0.2.66' }], // the client's own zone
  });
  dns.servfail.add('broken.test');
  dns.servfail.add('servfail.test');
  for (let i = 0; i < 1000; i++) dns.silent.add(`q${i}.flood.test`);
  server = await startTestServer({
    config: `
localDomains: [example.com]
# The flood's call waits out dns.timeoutMs (its 32 unanswered queries) and must still finish within the sandbox's
# limit: 1 s to spare was not enough on a loaded machine. No call here runs into the limit, so it costs no time.
sandbox: { timeoutMs: 10000 }
dns: { servers: ["${dns.address}"], timeoutMs: 1000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
    scripts: { 'connect.ts': CONNECT, 'mailfrom.ts': MAILFROM, 'data.ts': DATA },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

test('dnsbl() at connect: the listed client is refused, another is greeted', async () => {
  const listed = await SmtpTestClient.connect(server.port('mx'), { localAddress: '127.0.0.2' });
  assert.equal((await listed.read()).text, '554 5.7.1 Listed in bl.test (127.0.0.2)');
  listed.destroy();
  const clean = await SmtpTestClient.connect(server.port('mx'));
  await clean.hello();
  await clean.quit();
  assert.equal(dns.queries.get('A 1.0.0.127.bl.test'), 1);
});

test('dns.resolve() at MAIL FROM: MX found, none, no such domain, and a failure the script turns into a deferral', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const mail = async (from: string) => {
    const r = (await c.command(`MAIL FROM:<${from}>`)).text;
    if (r.startsWith('250')) await c.command('RSET');
    return r;
  };
  assert.equal(await mail('a@good.test'), '250 2.1.0 Sender ok, MX mx.good.test');
  assert.equal(await mail('a@nomx.test'), '550 5.7.1 No MX for nomx.test');
  assert.equal(await mail('a@nowhere.test'), '550 5.7.1 No MX for nowhere.test (no such domain)');
  assert.equal(await mail('a@servfail.test'), '451 4.3.0 DNS servfail for servfail.test');
  // Asked once: the second MAIL FROM is answered from the cache.
  assert.equal(await mail('b@good.test'), '250 2.1.0 Sender ok, MX mx.good.test');
  assert.equal(dns.queries.get('MX good.test'), 1);
  // { throw: true }: the failure rejects, and the uncaught rejection fails the hook closed.
  assert.equal(await mail('a@strict.test'), '451 4.3.0 Temporary policy failure, try again later');
  await c.quit();
  assert.ok(server.logs.some((l) => /dns\.resolve\(\): servfail: SERVFAIL for broken\.test A/.test(JSON.stringify(l))));
});

test('a call may have at most 32 DNS queries in flight: further ones reject in the script, and are never sent', async () => {
  // The DNS server never answers these: the first 32 stay in flight until dns.timeoutMs.
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@flood.test>')).text, '451 4.3.0 refused 968');
  await c.quit();
  const sent = [...dns.queries].filter(([k]) => k.endsWith('.flood.test')).reduce((n, [, v]) => n + v, 0);
  // A fast-path attempt stopped at its budget and run again may have sent its own 32 first.
  assert.ok(sent >= 32 && sent <= 64, `${sent} queries reached the DNS server`);
});

test('a NUL in a header\'s domain: the allow-list query is badname, not cut to the client\'s own name', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.match((await c.sendMail('a@good.test', ['u@example.com'], 'From: a@good.test\r\n\r\nhi\r\n')).text, /^250 .*allow-listed/);
  // A NUL in a header field is refused before any script runs (a next hop would cut the field there).
  assert.equal((await c.sendMail('a@good.test', ['u@example.com'], 'From: a@evil.test\0.x\r\n\r\nhi\r\n')).text, '554 5.6.0 Message header section contains a NUL character');
  // The body may carry one. Before: c-ares stopped at the NUL and asked for evil.test, which answered: allow-listed.
  assert.equal((await c.sendMail('a@good.test', ['u@example.com'], 'Subject: no from\r\n\r\na@evil.test\0.x\r\n')).text, '550 5.7.1 not allow-listed: badname');
  assert.equal(dns.queries.get('A evil.test'), undefined);
  await c.quit();
});

test('configuration: dns.timeoutMs must be below sandbox.timeoutMs; dns.servers and delivery.dnsServers are addresses', () => {
  const base = 'listeners: [{ name: a, listen: "127.0.0.1:0" }]\n';
  assert.throws(() => parseConfig(`${base}dns: { timeoutMs: 100 }\n`, 'p.yaml', '/tmp'), /dns\.timeoutMs.*must be below sandbox\.timeoutMs \(100 ms\)/s);
  assert.deepEqual(parseConfig(base, 'p.yaml', '/tmp').config.dns, { servers: [] });
  const servers = ['192.0.2.53', '192.0.2.53:5353', '2001:db8::53', '[2001:db8::53]:5353'];
  assert.deepEqual(parseConfig(`${base}dns: { servers: ${JSON.stringify(servers)} }\n`, 'p.yaml', '/tmp').config.dns.servers, servers);
  for (const bad of ['dns.example', '192.0.2.53:0', '[192.0.2.53]:53', '192.0.2.53:99999']) {
    assert.throws(() => parseConfig(`${base}dns: { servers: ["${bad}"] }\n`, 'p.yaml', '/tmp'), /expected an IP address, address:port or \[IPv6\]:port/, bad);
  }
  // delivery.dnsServers too: a name there was accepted, and every delivery attempt then failed with setServers()'s
  // TypeError (logged as "delivery attempt failed", the mail never deferred with a reason) until the config was fixed.
  assert.deepEqual(parseConfig(`${base}delivery: { dnsServers: ${JSON.stringify(servers)} }\n`, 'p.yaml', '/tmp').config.delivery.dnsServers, servers);
  for (const bad of ['dns.example', '192.0.2.53:0']) {
    assert.throws(() => parseConfig(`${base}delivery:\n  dnsServers: ["${bad}"]\n`, 'p.yaml', '/tmp'), /p\.yaml:3:\d+: delivery\.dnsServers\[0\]: expected an IP address, address:port or \[IPv6\]:port/s, bad);
  }
});

/**
 * The DNS answers scripts get are kept in a cache bounded by what they hold, not only by how many: a sender's
 * domain chooses what its DNS server answers (a TXT record of 60 KB, thousands of A records), so a script that
 * asks about `ctx.address.domain` at MAIL FROM (as SPF-style checks do) let one sender fill 10 000 entries of
 * 60 KB each (~620 MB per process) with one subdomain per command. Over real SMTP against a DNS server run by
 * the test: the script still gets the whole answer, and once the cache holds its limit the oldest answer is
 * asked again (counted at the DNS server: no memory or timing measured).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';

const MAILFROM = `export default async function (ctx) {
  const r = await dns.resolve(ctx.address.domain, 'TXT');
  if (!r.ok) return defer('DNS ' + r.error);
  return accept({ text: 'TXT ' + r.records.join('').length });
}`;

/** 240 strings of 250 characters: one answer of 60 000 characters, in one UDP datagram. */
const BIG_TXT = Array.from({ length: 240 }, (_, i) => String(i % 10).repeat(250));
/** 10.8 M characters in all: more than the cache holds (8 Mi characters, engine/dns/script-dns.ts MAX_CACHED_CHARS). */
const NAMES = 180;

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer();
  for (let i = 0; i < NAMES; i++) dns.zone.set(`s${i}.sender.test`, [{ type: 'TXT', value: BIG_TXT }]);
  server = await startTestServer({
    config: `
localDomains: [example.com]
sandbox: { timeoutMs: 5000 }
dns: { servers: ["${dns.address}"], timeoutMs: 4000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0, maxErrors: 100000 }
`,
    scripts: { 'mailfrom.js': MAILFROM },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

test('large answers push the oldest out of the DNS cache once it holds its limit; each script still gets its whole answer', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const mail = async (domain: string): Promise<string> => {
    const r = (await c.command(`MAIL FROM:<a@${domain}>`)).text;
    await c.command('RSET');
    return r;
  };
  assert.equal(await mail('s0.sender.test'), '250 2.1.0 TXT 60000');
  assert.equal(await mail('s0.sender.test'), '250 2.1.0 TXT 60000');
  assert.equal(dns.queries.get('TXT s0.sender.test'), 1, 'kept while the cache has room');
  for (let i = 1; i < NAMES; i++) assert.equal(await mail(`s${i}.sender.test`), '250 2.1.0 TXT 60000', `s${i}`);
  assert.equal(await mail('s1.sender.test'), '250 2.1.0 TXT 60000');
  assert.equal(dns.queries.get('TXT s1.sender.test'), 2, 'the oldest answer asked once was pushed out: asked again');
  // s0, asked twice, is in the cache's part for answers asked again (engine/dns/answer-cache.ts): still kept.
  assert.equal(await mail('s0.sender.test'), '250 2.1.0 TXT 60000');
  assert.equal(dns.queries.get('TXT s0.sender.test'), 1);
  // The newest are still kept.
  assert.equal(await mail(`s${NAMES - 1}.sender.test`), '250 2.1.0 TXT 60000');
  assert.equal(dns.queries.get(`TXT s${NAMES - 1}.sender.test`), 1);
  await c.quit();
});

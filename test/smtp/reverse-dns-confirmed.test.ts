// The client's host name (listeners' reverseDns) is forward-confirmed, as Postfix's verified client name:
// a PTR name counts only when its A records give the client's address back. Whoever controls an address's
// reverse zone can make it name anyone: unconfirmed, "bank.example" went into the Received header (which
// downstream filters read as the relay's verified name, e.g. SpamAssassin's whitelist_from_rcvd), the log
// lines and the EHLO reply. Real DNS (a test server on loopback, as the process's resolver), real clients
// from three loopback addresses.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dns from 'node:dns';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startDnsServer, ptrName, type TestDnsServer } from '../helpers/dns-server.ts';

let server: TestServer;
let zone: TestDnsServer;

before(async () => {
  zone = await startDnsServer({
    [ptrName('127.0.6.1')]: [{ type: 'PTR', value: 'mail.good.example' }],
    'mail.good.example': [{ type: 'A', value: '127.0.6.1' }],
    // Its owner names it as the bank; the bank's name does not lead back to it.
    [ptrName('127.0.6.2')]: [{ type: 'PTR', value: 'mail.bank.example' }],
    'mail.bank.example': [{ type: 'A', value: '192.0.2.25' }],
    // A name with no address at all.
    [ptrName('127.0.6.3')]: [{ type: 'PTR', value: 'nowhere.example' }],
    // Control characters, a space and non-ASCII in a PTR name whose forward record does lead back: node:dns
    // hands the name out escaped (\\013) and will not ask for it, so it is never the client's name.
    [ptrName('127.0.6.4')]: [{ type: 'PTR', value: 'mail\r\nX-Injected: yes\u00e9.evil.example' }],
    'mail\r\nx-injected: yes\u00e9.evil.example': [{ type: 'A', value: '127.0.6.4' }],
  });
  dns.setServers([zone.address]);
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: true
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(async () => {
  await server?.stop();
  await zone?.stop();
});

/** One message from `localAddress`: the EHLO reply's first line and the Received header's first line. */
async function from(localAddress: string): Promise<{ ehlo: string; received: string }> {
  const c = await SmtpTestClient.connect(server.port('mx'), { localAddress });
  const ehlo = (await c.hello()).lines[0]!;
  const r = await c.sendMail('someone@elsewhere.example', ['rcpt@example.com']);
  await c.quit();
  const id = /queued as (\S+)/.exec(r.text)![1]!;
  const message = (await server.runtime.spool.readMessage(id)).toString('utf8');
  return { ehlo, received: message.split('\r\n')[0]! };
}

test('a confirmed PTR name is the client\'s name; one whose forward records do not lead back is "unknown"', async () => {
  const good = await from('127.0.6.1');
  assert.match(good.received, /^Received: from client\.example \(mail\.good\.example \[127\.0\.6\.1\]\)$/);
  assert.match(good.ehlo, /Nice to meet you, mail\.good\.example/);

  const liar = await from('127.0.6.2');
  assert.match(liar.received, /^Received: from client\.example \(unknown \[127\.0\.6\.2\]\)$/);
  assert.doesNotMatch(liar.ehlo, /bank/);
  assert.ok(!server.logs.some((l) => JSON.stringify(l).includes('mail.bank.example') && /accepted from/.test(String(l.msg))), 'not in the accepted line either');

  const nowhere = await from('127.0.6.3');
  assert.match(nowhere.received, /^Received: from client\.example \(unknown \[127\.0\.6\.3\]\)$/);
  assert.ok((zone.queries.get('A mail.bank.example') ?? 0) >= 1, 'the forward lookup was made');

  const hostile = await from('127.0.6.4');
  assert.match(hostile.received, /^Received: from client\.example \(unknown \[127\.0\.6\.4\]\)$/);
  assert.doesNotMatch(hostile.ehlo, /evil|Injected/);
  assert.ok(!server.logs.some((l) => /Injected/.test(JSON.stringify(l))), 'nor in a log line');
});

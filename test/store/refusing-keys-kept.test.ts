/**
 * The in-memory store at its store.maxKeys: a flood of new keys must not drop the count of a key that is
 * refusing. It dropped the keys created longest ago, whatever their count, so a client refused by a limit
 * made its own refusal go away by making the store count enough new keys: a mail bomber refused by a
 * per-recipient rate() sent a few thousand RCPTs to addresses nobody has (one pipelined connection), and
 * its victim's count started again from 0; a client refused by limits.connectionRatePerIp came back once
 * enough other addresses (IPv6 networks, or a balancer's PROXY headers) had connected.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { proxyV2 } from '../helpers/proxy-header.ts';

const MAX_KEYS = 1000;
/**
 * New keys in each flood: twice maxKeys. Dropping the keys created longest ago whatever their count (the bug) drops the
 * refused key once maxKeys new ones came after it; three times that spent half again the CPU on the same outcome.
 */
const FLOOD = 2 * MAX_KEYS;

/** `n` RCPTs pipelined in transactions of 99 (within maxRecipients, and RSETs within maxJunkCommands), each to a new address. */
async function floodRecipients(port: number, n: number, offset: number): Promise<void> {
  const perConnection = 99 * 99;
  for (let done = 0; done < n; done += perConnection) {
    const c = await SmtpTestClient.connect(port);
    await c.hello();
    const count = Math.min(perConnection, n - done);
    let lines = '';
    let replies = 0;
    for (let i = 0; i < count; i++) {
      if (i % 99 === 0) { lines += 'MAIL FROM:<bomber@sender.example>\r\n'; replies++; }
      lines += `RCPT TO:<nobody-${offset + done + i}@example.net>\r\n`;
      replies++;
      if (i % 99 === 98 || i === count - 1) { lines += 'RSET\r\n'; replies++; }
    }
    c.write(lines.slice(0, -2)); // write() adds the last CRLF
    let refused = 0;
    for (let i = 0; i < replies; i++) if ((await c.read()).code >= 400) refused++;
    assert.equal(refused, 0, 'every flood recipient is new, so accepted');
    await c.quit();
  }
}

test('scripts\' rate(): a recipient refused by its count stays refused after 2,000 RCPTs to new addresses (twice maxKeys)', async () => {
  const server = await startTestServer({
    config: `
localDomains: [example.net]
store: { maxKeys: ${MAX_KEYS} }
sandbox: { timeoutMs: 20000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`,
    scripts: { 'rcptto.ts': `export default async function (ctx) {
      const r = await rate('to:' + ctx.address.address, 3, 3600);
      return r.allowed ? accept() : defer('too much mail for this mailbox', { code: 450 });
    }` },
  });
  try {
    const port = server.port('mx');
    const victim = async (): Promise<string> => {
      const c = await SmtpTestClient.connect(port);
      await c.hello();
      await c.command('MAIL FROM:<bomber@sender.example>');
      const r = (await c.command('RCPT TO:<victim@example.net>')).text;
      await c.quit();
      return r;
    };
    for (let i = 0; i < 3; i++) assert.match(await victim(), /^250 /);
    assert.match(await victim(), /^450 .*too much mail for this mailbox/);
    await floodRecipients(port, FLOOD, 0);
    assert.match(await victim(), /^450 .*too much mail for this mailbox/, 'the victim\'s count was dropped to make room for the flood');
    assert.ok(server.logs.some((l) => l.level === 40 && /^store: more than 1000 keys in memory; dropped/.test(String(l.msg))), 'the flood was trimmed (and logged)');
  } finally {
    await server.stop();
  }
});

/** A connection from `address` through the trusted balancer: its first reply. */
async function greeting(port: number, address: string): Promise<string> {
  const c = await SmtpTestClient.connect(port, { proxyHeader: proxyV2(address, 40000) });
  try {
    return (await c.read()).text;
  } finally {
    c.destroy();
  }
}

/** `n` connections from new IPv6 networks (a /64 each), `parallel` at a time: PROXY header, then closed once the greeting came. */
async function floodAddresses(port: number, n: number, parallel: number): Promise<void> {
  let next = 0;
  const one = (i: number): Promise<void> => new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => s.write(proxyV2(`2001:db8:${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::1`, 40000)));
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      got += d;
      if (got.includes('\r\n')) {
        s.destroy();
        if (got.startsWith('220 ')) resolve(); else reject(new Error(`flood connection ${i}: ${got.trim()}`));
      }
    });
    s.on('error', reject);
  });
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < n) await one(next++);
  }));
}

test('limits.connectionRatePerIp: a refused address stays refused after 2,000 connections from new addresses (twice maxKeys)', async () => {
  const server = await startTestServer({
    config: `
localDomains: [example.net]
store: { maxKeys: ${MAX_KEYS} }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    proxyProtocol: { trusted: [127.0.0.0/8] }
    limits: { greetingDelayMs: 0, connectionRatePerIp: { count: 3, windowSeconds: 3600 } }
`,
  });
  try {
    const port = server.port('mx');
    for (let i = 0; i < 3; i++) assert.match(await greeting(port, '203.0.113.7'), /^220 /);
    assert.match(await greeting(port, '203.0.113.7'), /^421 4\.7\.0 Error: too many connections from 203\.0\.113\.7/);
    await floodAddresses(port, FLOOD, 20);
    assert.match(await greeting(port, '203.0.113.7'), /^421 4\.7\.0 Error: too many connections from 203\.0\.113\.7/,
      'the refused address\'s count was dropped to make room for the flood');
  } finally {
    await server.stop();
  }
});

// limits.idleWhenFullMs: who is closed for a newcomer to a full listener by idleness, how the verdict's wait and our
// own held event loop count, over STARTTLS and across a reload, and what a client cannot do to evade it. One file
// for what were six (one test process and one load of the engine instead of six), each its own describe with its
// own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { makeTestPki } from '../helpers/pki.ts';
import type { ReloadOutcome } from '../../engine/reload/reloader.ts';

describe('idle-when-full', () => {
  // A full listener closed a connection for a newcomer only when some address held at least two more connections
  // than the newcomer's (listener-room.ts), or when a message arrived below minDataRate. A botnet of maxConnections
  // distinct addresses, each holding ONE connection idle after EHLO (or sending a command every ~290 s, just within
  // socketTimeoutMs, or a NOOP in a loop), kept every other client out with `421 4.7.0 Too many connected clients,
  // try again in a moment` for as long as it liked. Now, when that rule closes nobody, the connection idle longest
  // in the command phase (one that never sent MAIL FROM first; junk commands are no activity) is closed for the
  // newcomer once idle at least limits.idleWhenFullMs; never one receiving a message or waiting for its greeting.
  //
  // The clients wait out the idle time after reading their last reply (a lower bound on the idleness the server
  // measured), and nothing asserts how long anything takes.
  const IDLE_MS = 300;
  /** Past the idle time since the client read its last reply. */
  const idleOut = (): Promise<void> => sleep(IDLE_MS * 1.5);

  let server: TestServer;

  const listener = (name: string, limits: string): string => `
  - name: ${name}
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { maxConnectionsPerIp: 1, minDataRate: 0, ${limits} }`;

  before(async () => {
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:${listener('botnet', `greetingDelayMs: 0, maxConnections: 4, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('prefer', `greetingDelayMs: 0, maxConnections: 4, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('busy', `greetingDelayMs: 0, maxConnections: 4, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('greeting', `greetingDelayMs: 1500, maxConnections: 1, idleWhenFullMs: ${IDLE_MS}`)}${
  listener('off', 'greetingDelayMs: 0, maxConnections: 2, idleWhenFullMs: 0')}
`,
    });
  });
  after(() => server.stop());

  /** A greeted connection from `ip` that said EHLO. */
  async function afterEhlo(name: string, ip: string): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(server.port(name), { localAddress: ip });
    assert.equal((await c.read()).code, 220, c.transcript.join('\n'));
    assert.equal((await c.command('EHLO holder.example')).code, 250, c.transcript.join('\n'));
    return c;
  }

  async function mailFrom(c: SmtpTestClient): Promise<void> {
    assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250, c.transcript.join('\n'));
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250, c.transcript.join('\n'));
  }

  const open = (name: string): number => (server.servers.get(name) as unknown as { connections: Set<unknown> }).connections.size;
  const idleLines = (name: string): Array<Record<string, unknown>> =>
    server.logs.filter((l) => l.listener === name && typeof l.reason === 'string' && l.reason.startsWith('limits.idleWhenFullMs: '));
  const IDLE_CLOSED = /^421 4\.7\.0 \S+ Too many connected clients, this connection idle for [\d.]+ s is closed for another client$/;

  test('a listener held full by distinct addresses, one idle connection each, greets a newcomer: the idlest is closed', { timeout: 30_000 }, async () => {
    const holders: SmtpTestClient[] = [];
    for (const ip of ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']) holders.push(await afterEhlo('botnet', ip));
    await until('four open', () => open('botnet') === 4);
    await idleOut();

    const newcomer = await SmtpTestClient.connect(server.port('botnet'), { localAddress: '127.0.0.6' });
    assert.equal((await newcomer.read()).code, 220, `the newcomer is let in: ${newcomer.transcript.join('\n')}`);
    await until('one holder closed', () => holders.some((c) => c.closed));
    const closed = holders.filter((c) => c.closed);
    assert.equal(closed.length, 1);
    assert.equal(closed[0], holders[0], 'the one idle longest');
    assert.match((await closed[0]!.read()).text, IDLE_CLOSED, closed[0]!.transcript.join('\n'));
    const lines = idleLines('botnet');
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.equal(lines[0]!.client, '127.0.0.2');
    assert.match(String(lines[0]!.reason), /^limits\.idleWhenFullMs: idle [\d.]+ s, never a MAIL FROM, while the listener was full \(at least 300 ms\): closed for another client$/);
    assert.equal((await newcomer.command('EHLO newcomer.example')).code, 250, 'the newcomer is served');
    for (const c of [...holders, newcomer]) c.destroy();
  });

  test('the one closed first never sent MAIL FROM (NOOPs are no activity), then the one that did, idle longest', { timeout: 30_000 }, async () => {
    const transaction = await afterEhlo('prefer', '127.0.0.2'); // idle longest, but mid-transaction
    await mailFrom(transaction);
    const nooper = await afterEhlo('prefer', '127.0.0.3'); // never a MAIL FROM, a NOOP every 50 ms
    const delivered = await afterEhlo('prefer', '127.0.0.4'); // a message accepted, then idle
    assert.equal((await delivered.sendMail('a@sender.example', ['b@example.com'])).code, 250, delivered.transcript.join('\n'));
    const quiet = await afterEhlo('prefer', '127.0.0.5'); // never a MAIL FROM, idle since its EHLO
    let nooping = true;
    const loop = (async () => {
      while (nooping && !nooper.closed) {
        nooper.socket.write('NOOP\r\n');
        await sleep(50);
      }
    })();
    await idleOut();

    const newcomers: SmtpTestClient[] = [];
    const admit = async (ip: string): Promise<void> => {
      const c = await SmtpTestClient.connect(server.port('prefer'), { localAddress: ip });
      newcomers.push(c);
      assert.equal((await c.read()).code, 220, c.transcript.join('\n'));
      // Into a transaction at once: a newcomer never outranks the holders below, however late the next one comes.
      assert.equal((await c.command('EHLO newcomer.example')).code, 250);
      await mailFrom(c);
    };
    await admit('127.0.0.6');
    await until('the NOOP loop closed', () => nooper.closed);
    nooping = false;
    await loop;
    await admit('127.0.0.7');
    await until('the quiet one closed', () => quiet.closed);
    await admit('127.0.0.8');
    await until('the transaction idle longest closed', () => transaction.closed);
    assert.equal(delivered.closed, false, delivered.transcript.join('\n'));
    assert.match((await transaction.read()).text, IDLE_CLOSED);
    assert.deepEqual(idleLines('prefer').map((l) => [l.client, String(l.reason).includes('never a MAIL FROM')]),
      [['127.0.0.3', true], ['127.0.0.5', true], ['127.0.0.2', false]]);
    for (const c of [transaction, nooper, delivered, quiet, ...newcomers]) c.destroy();
  });

  test('connections receiving a message are never closed for idleness; one idle after its message is', { timeout: 30_000 }, async () => {
    const senders: SmtpTestClient[] = [];
    for (const ip of ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']) {
      const c = await afterEhlo('busy', ip);
      await mailFrom(c);
      assert.equal((await c.command('DATA')).code, 354);
      c.socket.write('Subject: slow\r\n\r\n');
      senders.push(c);
    }
    let sending = true;
    let finishing: SmtpTestClient | null = null;
    const loop = (async () => {
      while (sending) {
        for (const c of senders) if (!c.closed && c !== finishing) c.socket.write('a line\r\n');
        await sleep(50);
      }
    })();
    await idleOut();

    const refused = await SmtpTestClient.connect(server.port('busy'), { localAddress: '127.0.0.6' });
    assert.match((await refused.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/);
    assert.deepEqual(senders.map((c) => c.closed), [false, false, false, false]);

    finishing = senders[2]!;
    finishing.socket.write('.\r\n');
    assert.equal((await finishing.read()).code, 250, finishing.transcript.join('\n'));
    await idleOut();
    const newcomer = await SmtpTestClient.connect(server.port('busy'), { localAddress: '127.0.0.7' });
    assert.equal((await newcomer.read()).code, 220, newcomer.transcript.join('\n'));
    await until('the one done with its message closed', () => finishing!.closed);
    assert.deepEqual(senders.map((c) => c.closed), [false, false, true, false]);
    sending = false;
    await loop;
    for (const c of senders.filter((s) => !s.closed)) {
      c.socket.write('.\r\n');
      assert.equal((await c.read()).code, 250, 'each message still taken');
    }
    for (const c of [...senders, refused, newcomer]) c.destroy();
  });

  test('a connection waiting for its greeting is not idle: the newcomer is refused as before', { timeout: 30_000 }, async () => {
    const waiting = await SmtpTestClient.connect(server.port('greeting'), { localAddress: '127.0.0.2' });
    await until('one open', () => open('greeting') === 1);
    await idleOut();
    const refused = await SmtpTestClient.connect(server.port('greeting'), { localAddress: '127.0.0.3' });
    assert.match((await refused.read()).text, /Too many connected clients, try again in a moment$/);
    assert.equal((await waiting.read()).code, 220, waiting.transcript.join('\n'));
    for (const c of [waiting, refused]) c.destroy();
  });

  test('idleWhenFullMs 0: idle holders keep a full listener, as before', { timeout: 30_000 }, async () => {
    const holders = [await afterEhlo('off', '127.0.0.2'), await afterEhlo('off', '127.0.0.3')];
    await idleOut();
    const refused = await SmtpTestClient.connect(server.port('off'), { localAddress: '127.0.0.4' });
    assert.match((await refused.read()).text, /Too many connected clients, try again in a moment$/);
    assert.deepEqual(holders.map((c) => c.closed), [false, false]);
    assert.equal(idleLines('off').length, 0);
    for (const c of [...holders, refused]) c.destroy();
  });
});

describe('idle-when-full-wait', () => {
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
});

describe('idle-when-full-verdict', () => {
  // limits.idleWhenFullMs closes, for a newcomer to a full listener, a connection idle in the command phase: never
  // one whose client waits for us. Here every place is held by clients idle longer than idleWhenFullMs on the wire
  // but waiting for a verdict (a MAIL hook, the data hook, each waiting for a DNS answer that never comes within
  // dns.timeoutMs): the newcomer is refused as before, and nobody is closed.
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
});

describe('idle-when-full-evasion', () => {
  // limits.idleWhenFullMs counts a reply 2xx/3xx to a command other than a junk one as activity. Unbounded, a client
  // repeating an accepted RCPT (RSET, MAIL FROM, RCPT again: each accepted, none junk but RSET, which maxJunkCommands
  // lets pass 100 times) every few seconds was never idle, and held its slot of a full listener for about a day
  // (some 100 transactions of maxRecipients RCPTs, each just within idleWhenFullMs) without sending a message. Now
  // at most maxRecipients + 16 such replies between two accepted messages count.
  //
  // Here maxRecipients is 2 (18 replies count): the holder loops MAIL, RCPT, RCPT, RSET past that, goes on at a
  // transaction every quarter of idleWhenFullMs for 1.5 times it, and stops: the newcomer that follows closes it
  // (before, its last RCPT counted, and the newcomer was refused).
  const IDLE_MS = 1000;
  let server: TestServer;

  before(async () => {
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, maxRecipients: 2, idleWhenFullMs: ${IDLE_MS} }
  # The same, judged at 10 s: a client served without a pause of that length, however loaded the machine.
  - name: sending
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, maxRecipients: 2, idleWhenFullMs: 10000 }
`,
    });
  });
  after(() => server.stop());

  async function transaction(c: SmtpTestClient, reset: boolean): Promise<void> {
    for (const line of ['MAIL FROM:<a@sender.example>', 'RCPT TO:<b1@example.com>', 'RCPT TO:<b2@example.com>']) {
      assert.equal((await c.command(line)).code, 250, c.transcript.join('\n'));
    }
    if (reset) assert.equal((await c.command('RSET')).code, 250, c.transcript.join('\n'));
  }

  test('accepted RCPTs repeated without a message stop counting as activity: the holder is closed as idle', { timeout: 60_000 }, async () => {
    const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
    assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
    assert.equal((await holder.command('EHLO holder.example')).code, 250);
    for (let i = 0; i < 7; i++) await transaction(holder, true); // 21 accepted: past the 18 that count
    const pastBound = performance.now();
    while (performance.now() - pastBound < IDLE_MS * 1.5) {
      await sleep(IDLE_MS / 4); // a few transactions, well within maxJunkCommands (RSET)
      await transaction(holder, true);
    }
    await transaction(holder, false); // its last reply an accepted RCPT's, just read

    const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
    assert.equal((await newcomer.read()).code, 220, `the newcomer is let in: ${newcomer.transcript.join('\n')}`);
    await until('the holder closed', () => holder.closed);
    assert.match((await holder.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, this connection idle for [\d.]+ s is closed for another client$/, holder.transcript.join('\n'));
    const lines = server.logs.filter((l) => typeof l.reason === 'string' && l.reason.startsWith('limits.idleWhenFullMs: '));
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.match(String(lines[0]!.reason), /after a MAIL FROM/);
    for (const c of [holder, newcomer]) c.destroy();
  });

  test('a client whose messages are accepted is not idle: each accepted message starts the count again', { timeout: 60_000 }, async () => {
    const sender = await SmtpTestClient.connect(server.port('sending'), { localAddress: '127.0.0.4' });
    assert.equal((await sender.read()).code, 220, sender.transcript.join('\n'));
    assert.equal((await sender.command('EHLO sender.example')).code, 250);
    for (let i = 0; i < 12; i++) {
      await transaction(sender, true); // given up: 3 counted each
      assert.equal((await sender.sendMail('a@sender.example', ['b1@example.com', 'b2@example.com'])).code, 250, sender.transcript.join('\n'));
    }
    const newcomer = await SmtpTestClient.connect(server.port('sending'), { localAddress: '127.0.0.5' });
    assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
    assert.equal(sender.closed, false);
    for (const c of [sender, newcomer]) c.destroy();
  });
});

describe('idle-when-full-starttls', () => {
  // limits.idleWhenFullMs: a STARTTLS handshake that just completed is activity. Its client's next command is EHLO, a
  // junk command (no activity), so the idle clock ran from the STARTTLS 220 through the whole handshake: a handshake
  // that took longer than idleWhenFullMs (our CPU under load, a far client; here a ClientHello sent late stands in
  // for it) had its client closed for a newcomer to the full listener between its EHLO and its MAIL FROM.
  const IDLE_MS = 1500;
  let server: TestServer;
  let ca = '';

  before(async () => {
    const pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, tlsHandshakeTimeoutMs: 30000, idleWhenFullMs: ${IDLE_MS} }
`,
    });
  });
  after(() => server.stop());

  test('a client whose STARTTLS handshake outlasted idleWhenFullMs is not idle once it completed', { timeout: 60_000 }, async () => {
    const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
    assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
    assert.equal((await holder.command('EHLO holder.example')).code, 250);
    await holder.starttls({ ca }, () => sleep(IDLE_MS * 1.5));
    assert.equal((await holder.command('EHLO holder.example')).code, 250, holder.transcript.join('\n'));

    const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
    assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
    assert.equal(holder.closed, false, holder.transcript.join('\n'));
    assert.equal((await holder.command('MAIL FROM:<a@sender.example>')).code, 250, holder.transcript.join('\n'));
    for (const c of [holder, newcomer]) c.destroy();
  });
});

describe('idle-when-full-reload', () => {
  // limits.idleWhenFullMs is judged by the configuration in force when a newcomer finds the listener full. A session
  // keeps the generation it last used until its next command outside a transaction, and an idle one sends none: a
  // reload setting idleWhenFullMs to 0 ("never"), say because it closed clients it should not, went on closing every
  // connection opened before it, for as long as they stayed.
  let server: TestServer;

  before(async () => {
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, idleWhenFullMs: 300 }
`,
    });
  });
  after(() => server.stop());

  test('a reload setting idleWhenFullMs to 0 stops the closing of connections opened before it', { timeout: 60_000 }, async () => {
    const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
    assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
    assert.equal((await holder.command('EHLO holder.example')).code, 250);

    const reloaded = new Promise<ReloadOutcome>((resolve) => { const stop = server.reloader.onReload((o) => { if (o.changed) { stop(); resolve(o); } }); });
    const file = join(server.dir, 'postern.yaml');
    await writeFile(file, (await readFile(file, 'utf8')).replace('idleWhenFullMs: 300', 'idleWhenFullMs: 0'));
    const outcome = await reloaded;
    assert.equal(outcome.ok, true, JSON.stringify(outcome));
    await sleep(450); // past the old idleWhenFullMs since the EHLO was answered

    const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
    assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
    assert.equal(holder.closed, false, holder.transcript.join('\n'));
    assert.equal((await holder.command('MAIL FROM:<a@sender.example>')).code, 250, holder.transcript.join('\n'));
    for (const c of [holder, newcomer]) c.destroy();
  });
});

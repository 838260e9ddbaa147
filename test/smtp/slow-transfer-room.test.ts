// A connection receiving a message was never closed for another client (listener-room.ts), so clients sending
// their messages at a drip (a line just within socketTimeoutMs) held a full listener for up to dataTimeoutMs (an
// hour by default) while every newcomer read `421 4.7.0 Too many connected clients`: two addresses at their
// per-IP limit were enough, and a botnet needs no second connection per address. A full listener now closes the
// slowest transfer below limits.minDataRate over limits.dataRateWindowMs with 421 4.4.2 and greets the newcomer;
// a message flowing at a normal rate, and any transfer on a listener that is not full, keep going.
//
// The clients wait out the window before the newcomer comes (a lower bound on the time the server measured:
// its window starts before the client reads the 354), and assert nothing about how long anything takes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFileSync } from 'node:fs';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';

const WINDOW_MS = 1000;
/** Far above a line every 100 ms, far below what a client writing as fast as it can sends over loopback. */
const MIN_RATE = 20_000;
const limits = (maxConnections: number, maxConnectionsPerIp: number) =>
  ({ maxConnections, maxConnectionsPerIp, minDataRate: MIN_RATE, dataRateWindowMs: WINDOW_MS });

let server: TestServer;
let pki: TestPki;

before(async () => {
  pki = await makeTestPki();
  server = await startTestServer({
    config: configYaml({
      localDomains: ['example.com'],
      listeners: [
        testListener('starved', { tls: { mode: 'none' }, limits: limits(4, 2) }),
        testListener('mixed', { tls: { mode: 'none' }, limits: limits(3, 2) }),
        testListener('single', { tls: { mode: 'none' }, limits: limits(1, 1) }),
        testListener('burst', { tls: { mode: 'none' }, limits: limits(1, 1) }),
        testListener('roomy', { tls: { mode: 'none' }, limits: limits(3, 2) }),
        testListener('secure', { tls: testServerTls(pki), limits: limits(2, 2) }),
        testListener('serial', { tls: { mode: 'none' }, limits: limits(1, 1) }),
      ],
    }),
  });
});
after(() => server.stop());

const tlsClient = () => ({ ca: readFileSync(pki.ca.cert, 'utf8') });

/** A client from `ip` in DATA (after STARTTLS with `tls`): the 354 read. */
async function inData(listener: string, ip: string, tls = false): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port(listener), { localAddress: ip });
  assert.equal((await c.hello(tls ? { starttls: tlsClient() } : {})).code, 250, c.transcript.join('\n'));
  assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354, c.transcript.join('\n'));
  c.socket.write('Subject: a message\r\n\r\n');
  return c;
}

/**
 * Keeps `c` sending: a short line every 100 ms (a drip) or 16 KiB at a time as fast as the socket takes them
 * (a normal client); stop() ends the loop (the message is left open).
 */
function keepSending(c: SmtpTestClient, how: 'drip' | 'flow'): { stop(): Promise<void> } {
  let stopped = false;
  const chunk = Buffer.from(`${'x'.repeat(1022)}\r\n`.repeat(16));
  const loop = (async () => {
    while (!stopped && !c.closed) {
      if (how === 'drip') {
        c.socket.write('a line\r\n');
        await sleep(100);
      } else if (!c.socket.write(chunk)) {
        await new Promise<void>((resolve) => { c.socket.once('drain', resolve); c.socket.once('close', resolve); });
      } else {
        await sleep(0);
      }
    }
  })();
  return { async stop() { stopped = true; await loop; } };
}

const slowLines = (): Array<Record<string, unknown>> =>
  server.logs.filter((l) => typeof l.reason === 'string' && l.reason.startsWith('limits.minDataRate: '));

test('a listener held full by messages sent at a drip greets a newcomer: the slowest transfer is closed with 421 4.4.2', { timeout: 60_000 }, async () => {
  const drippers = [await inData('starved', '127.0.0.2'), await inData('starved', '127.0.0.2'), await inData('starved', '127.0.0.3'), await inData('starved', '127.0.0.3')];
  const drips = drippers.map((c) => keepSending(c, 'drip'));
  await sleep(WINDOW_MS * 1.5);

  // Each newcomer stays: the second finds the listener full again.
  const newcomers = [];
  for (const ip of ['127.0.0.4', '127.0.0.5']) {
    const newcomer = await SmtpTestClient.connect(server.port('starved'), { localAddress: ip });
    newcomers.push(newcomer);
    const greeting = await newcomer.read();
    assert.equal(greeting.code, 220, `a newcomer from ${ip} is let in: ${newcomer.transcript.join('\n')}`);
  }
  await until('two drippers closed', () => drippers.filter((c) => c.closed).length === 2);
  for (const c of drippers.filter((d) => d.closed)) {
    assert.match((await c.read()).text, /^421 4\.4\.2 \S+ Message arriving too slowly while the server is full, closing connection$/, c.transcript.join('\n'));
  }
  const lines = slowLines().filter((l) => l.listener === 'starved');
  assert.equal(lines.length, 2, JSON.stringify(lines));
  for (const l of lines) {
    assert.equal(l.stage, 'DATA');
    assert.match(String(l.reason), new RegExp(`^limits\\.minDataRate: [\\d.]+ bytes/s over the last [\\d.]+ s, below ${MIN_RATE}, while the listener was full: closed for another client$`));
  }
  for (const d of drips) await d.stop();
  for (const c of [...drippers, ...newcomers]) c.destroy();
  await until('every dripper gone', () => (server.servers.get('starved') as unknown as { connections: Set<unknown> }).connections.size === 0);
  assert.deepEqual(await server.runtime.spool.list(), [], 'nothing of a message cut off is kept');
});

test('a message arriving at a normal rate on a full listener is not cut: the dripping one beside it is', { timeout: 60_000 }, async () => {
  const sender = await inData('mixed', '127.0.0.2');
  const flow = keepSending(sender, 'flow');
  const drippers = [await inData('mixed', '127.0.0.3'), await inData('mixed', '127.0.0.3')];
  const drips = drippers.map((c) => keepSending(c, 'drip'));
  await sleep(WINDOW_MS * 1.5);

  const newcomer = await SmtpTestClient.connect(server.port('mixed'), { localAddress: '127.0.0.4' });
  assert.equal((await newcomer.read()).code, 220, newcomer.transcript.join('\n'));
  await until('a dripper closed', () => drippers.some((c) => c.closed));
  assert.equal(sender.closed, false, sender.transcript.join('\n'));

  await flow.stop();
  sender.socket.write('\r\n.\r\n');
  assert.equal((await sender.read()).code, 250, sender.transcript.join('\n'));
  for (const d of drips) await d.stop();
  for (const c of [sender, ...drippers, newcomer]) c.destroy();
});

test('a full listener whose only transfer flows at a normal rate refuses the newcomer as before, and the message is taken', { timeout: 60_000 }, async () => {
  const sender = await inData('single', '127.0.0.2');
  const flow = keepSending(sender, 'flow');
  await sleep(WINDOW_MS * 1.5);
  const newcomer = await SmtpTestClient.connect(server.port('single'), { localAddress: '127.0.0.3' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 .*Too many connected clients, try again in a moment$/);
  await flow.stop();
  sender.socket.write('\r\n.\r\n');
  assert.equal((await sender.read()).code, 250, sender.transcript.join('\n'));
  assert.equal(slowLines().filter((l) => l.listener === 'single').length, 0);
  for (const c of [sender, newcomer]) c.destroy();
});

test('the rate is the last window\'s: a message sent fast at first and then at a drip is closed for a newcomer', { timeout: 60_000 }, async () => {
  const c = await inData('burst', '127.0.0.2');
  c.socket.write(`${'x'.repeat(1022)}\r\n`.repeat(200)); // 200 KiB at once: well above the rate over the whole transfer
  const drip = keepSending(c, 'drip');
  await sleep(WINDOW_MS * 2.5); // then two windows and more of a drip
  const newcomer = await SmtpTestClient.connect(server.port('burst'), { localAddress: '127.0.0.3' });
  assert.equal((await newcomer.read()).code, 220, newcomer.transcript.join('\n'));
  assert.match((await c.read()).text, /^421 4\.4\.2 /, c.transcript.join('\n'));
  await drip.stop();
  for (const x of [c, newcomer]) x.destroy();
});

test('a message sent at a drip on a listener that is not full is taken in full', { timeout: 60_000 }, async () => {
  const dripper = await inData('roomy', '127.0.0.2');
  const drip = keepSending(dripper, 'drip');
  await sleep(WINDOW_MS * 1.5);
  // The listener fills up to its limit, not past it: nobody is judged.
  const others = [];
  for (const ip of ['127.0.0.3', '127.0.0.4']) {
    const c = await SmtpTestClient.connect(server.port('roomy'), { localAddress: ip });
    assert.equal((await c.read()).code, 220, c.transcript.join('\n'));
    others.push(c);
  }
  await drip.stop();
  dripper.socket.write('.\r\n');
  assert.equal((await dripper.read()).code, 250, dripper.transcript.join('\n'));
  assert.equal(slowLines().filter((l) => l.listener === 'roomy').length, 0);
  for (const c of [dripper, ...others]) c.destroy();
});

test('after STARTTLS the rate is the message\'s bytes: a fast sender keeps its slot, a dripping one is closed', { timeout: 60_000 }, async () => {
  const sender = await inData('secure', '127.0.0.2', true);
  const flow = keepSending(sender, 'flow');
  const dripper = await inData('secure', '127.0.0.3', true);
  const drip = keepSending(dripper, 'drip');
  await sleep(WINDOW_MS * 1.5);

  const newcomer = await SmtpTestClient.connect(server.port('secure'), { localAddress: '127.0.0.4' });
  assert.equal((await newcomer.read()).code, 220, newcomer.transcript.join('\n'));
  assert.ok(await dripper.waitClosed(), 'the dripping transfer closed');
  assert.match((await dripper.read()).text, /^421 4\.4\.2 /);
  await flow.stop();
  sender.socket.write('\r\n.\r\n');
  assert.equal((await sender.read()).code, 250, sender.transcript.join('\n'));
  await drip.stop();
  for (const c of [sender, dripper, newcomer]) c.destroy();
});

// Each message's transfer was judged alone, and one younger than the window never: a client dripping one short
// message after another, each taking a little less than the window, held its slot (and with a botnet, the listener)
// for ever, for one accepted message a window. The rate is now the connection's over the last window of its
// transfers (the time between its messages, ours, not counted).
test('messages dripped one after another, each shorter than the window, are judged together: the one under way is closed for a newcomer', { timeout: 60_000 }, async () => {
  const c = await SmtpTestClient.connect(server.port('serial'), { localAddress: '127.0.0.2' });
  assert.equal((await c.hello()).code, 250, c.transcript.join('\n'));
  const dripOne = async (): Promise<void> => {
    assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250, c.transcript.join('\n'));
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354, c.transcript.join('\n'));
    c.socket.write('Subject: a drip\r\n\r\n');
  };
  for (let i = 0; i < 4; i++) {
    await dripOne();
    await sleep(WINDOW_MS * 0.4); // the server's clock for it ran at least this long: from before its 354 to its dot
    assert.equal((await c.command('a line\r\n.')).code, 250, c.transcript.join('\n'));
  }
  await dripOne(); // the fifth, a moment old, after 1.6 windows of transfers at a few bytes a second

  const newcomer = await SmtpTestClient.connect(server.port('serial'), { localAddress: '127.0.0.3' });
  assert.equal((await newcomer.read()).code, 220, `the dripper's slot is given to a newcomer: ${newcomer.transcript.join('\n')}`);
  assert.match((await c.read()).text, /^421 4\.4\.2 /, c.transcript.join('\n'));
  for (const x of [c, newcomer]) x.destroy();
});

// Hostile DATA: far more than maxMessageSize, and huge header sections sent in tiny pieces.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { headerBytesScanned } from '../../engine/smtp/header-reader.ts';
import type { SpoolWriter } from '../../engine/spool/spool.ts';

const LIMIT = 100 * 1024;
const HEADER_LIMIT = 64 * 1024;
const FIELD_LIMIT = 50;
let server: TestServer;
const writers: SpoolWriter[] = [];

before(async () => {
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0, maxMessageSize: ${LIMIT}, maxHeaderBytes: ${HEADER_LIMIT} }
  - name: big
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
  - name: fields
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0, maxHeaderFields: ${FIELD_LIMIT} }
`,
    scripts: {
      'data.ts': `export default (ctx) => { const h = ctx.data.headers;
        if (h[0] && h[0][1] === 'fields' && h.length !== ${FIELD_LIMIT}) return reject('saw ' + h.length + ' fields', { code: 550 });
        if (h[0] && h[0][1] === 'slow' && (h.length !== 2501 || h[2500][0] !== 'X-Filler-2499')) return reject('saw ' + h.length + ' fields', { code: 550 }); };`,
    },
  });
  // Every writer the spool hands out, to see how many bytes each transaction was given.
  const spool = server.runtime.spool;
  const create = spool.create.bind(spool);
  spool.create = (id: string) => {
    const w = create(id);
    writers.push(w);
    return w;
  };
});
after(() => server.stop());

async function incomingBytes(): Promise<number> {
  const dir = server.runtime.spool.incomingDir;
  let total = 0;
  for (const name of await readdir(dir)) total += await stat(join(dir, name)).then((s) => s.size, () => 0);
  return total;
}

async function startData(c: SmtpTestClient): Promise<void> {
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
}

/** Write `data` and wait until the kernel took it (so a huge stream does not sit in the client's memory). */
function send(c: SmtpTestClient, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => c.socket.write(data, (err) => (err ? reject(err) : resolve())));
}

test('a message far over maxMessageSize: nothing past the limit is spooled, 552 5.3.4 after the dot, the connection goes on', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const first = writers.length;
  await startData(c);
  const line = Buffer.from('x'.repeat(998) + '\r\n');
  const block = Buffer.concat(Array.from({ length: 256 }, () => line)); // 256 KB
  await send(c, 'Subject: big\r\n\r\n');
  let largestIncoming = 0;
  for (let i = 0; i < 40; i++) { // 10 MB, a hundred times the limit
    await send(c, block);
    largestIncoming = Math.max(largestIncoming, await incomingBytes());
  }
  await send(c, '.\r\n');
  const reply = await c.read(60_000);
  assert.equal(reply.text, '552 5.3.4 Message size exceeds fixed maximum message size');
  const writer = writers[first];
  assert.ok(writer, 'the transaction had a spool writer');
  assert.ok(writer.bytes <= LIMIT + 2048, `the spool was given ${writer.bytes} bytes (limit ${LIMIT} + our Received header)`);
  assert.ok(largestIncoming <= LIMIT + 2048, `incoming/ held ${largestIncoming} bytes during the transfer`);
  assert.equal(await incomingBytes(), 0);
  assert.deepEqual(await server.runtime.spool.list(), []);

  assert.equal((await c.command('RSET')).code, 250);
  const next = await c.sendMail('a@example.com', ['b@example.com']);
  assert.equal(next.code, 250, next.text);
  await c.quit();
});

test('a header section read in 16-byte pieces is searched in linear time; the data hook sees its fields', async () => {
  const c = await SmtpTestClient.connect(server.port('big'));
  await c.hello();
  await startData(c);
  const fields = Array.from({ length: 2500 }, (_, i) => `X-Filler-${i}: ${'h'.repeat(80)}\r\n`).join(''); // ~250 KB
  const header = `Subject: slow\r\n${fields}`;
  c.socket.setNoDelay(true);
  const before = headerBytesScanned();
  const bytes = Buffer.from(header + '\r\nbody\r\n');
  for (let at = 0; at < bytes.length; at += 16) await send(c, bytes.subarray(at, at + 16));
  await send(c, '.\r\n');
  const reply = await c.read(60_000);
  assert.equal(reply.code, 250, reply.text);
  const scanned = headerBytesScanned() - before;
  assert.ok(scanned <= 3 * bytes.length, `searched ${scanned} bytes for a ${bytes.length}-byte message`);
  await c.quit();
});

test('a header section over maxHeaderBytes gets 552 5.3.4 and is not spooled; the next message is', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const spooled = (await server.runtime.spool.list()).length;
  const first = writers.length;
  await startData(c);
  const fields = Array.from({ length: 1000 }, (_, i) => `X-Filler-${i}: ${'h'.repeat(80)}\r\n`).join(''); // ~90 KB
  await send(c, `Subject: fat\r\n${fields}\r\nbody\r\n.\r\n`);
  const reply = await c.read(60_000);
  assert.equal(reply.text, `552 5.3.4 Message header section exceeds fixed maximum size of ${HEADER_LIMIT} bytes`);
  assert.ok(writers[first]!.bytes <= HEADER_LIMIT + 4096, `the spool was given ${writers[first]!.bytes} bytes`);
  assert.equal((await server.runtime.spool.list()).length, spooled);
  const ok = await c.sendMail('a@example.com', ['b@example.com'], `Subject: fine\r\n${fields.slice(0, 30_000)}\r\nbody\r\n`);
  assert.equal(ok.code, 250, ok.text);
  await c.quit();
});

test('a header bomb (250,000 short fields within maxHeaderBytes) gets 552 5.3.4 after the dot and nothing is spooled', async () => {
  // On the listener with default limits: 1 MB of header section is allowed, 5000 fields are not. Each field would be
  // an entry of ctx.data.headers: a script going through them ran out of its time, and the client got 451 (retried
  // for ever) instead of a refusal.
  const c = await SmtpTestClient.connect(server.port('big'));
  await c.hello();
  const spooled = (await server.runtime.spool.list()).length;
  await startData(c);
  const bomb = Buffer.from('a:\r\n'.repeat(250_000)); // 1,000,000 bytes, under the 1 MiB maxHeaderBytes
  await send(c, bomb);
  await send(c, '\r\nbody\r\n.\r\n');
  const reply = await c.read(60_000);
  assert.equal(reply.text, '552 5.3.4 Message header section exceeds fixed maximum of 5000 fields');
  assert.equal((await server.runtime.spool.list()).length, spooled);
  assert.equal(await incomingBytes(), 0);
  // The connection goes on; a decision line names the limit.
  const ok = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: fine\r\n\r\nbody\r\n');
  assert.equal(ok.code, 250, ok.text);
  await c.quit();
  const line = server.logs.find((l) => l.reason === 'limits.maxHeaderFields');
  assert.ok(line, 'a decision line with the reason limits.maxHeaderFields');
  assert.equal(line.decision, 'reject');
});

test('maxHeaderFields counts fields, not folded lines: exactly the limit passes (the hook sees them all), one more is refused', async () => {
  const c = await SmtpTestClient.connect(server.port('fields'));
  await c.hello();
  // 50 fields, each folded over three lines, with LF and CRLF line ends mixed.
  const fields = ['Subject: fields\r\n', ...Array.from({ length: FIELD_LIMIT - 1 }, (_, i) => `X-F${i}: a\r\n b\n\tc${i % 2 ? '\r\n' : '\n'}`)].join('');
  const ok = await c.sendMail('a@example.com', ['b@example.com'], `${fields}\r\nbody\r\n`);
  assert.equal(ok.code, 250, ok.text);
  const over = await c.sendMail('a@example.com', ['b@example.com'], `${fields}X-One-More: x\r\n\r\nbody\r\n`);
  assert.equal(over.text, `552 5.3.4 Message header section exceeds fixed maximum of ${FIELD_LIMIT} fields`);
  // Lines after the empty line are body, however many.
  const body = await c.sendMail('a@example.com', ['b@example.com'], `${fields}\r\n${'b:\r\n'.repeat(1000)}`);
  assert.equal(body.code, 250, body.text);
  await c.quit();
});

// Many clients each in the middle of a large message at once: every message up to 1 MiB used to be held in
// memory until its end (for one journal write), so a worker's memory grew by ~1 MB per sending client, up
// to maxConnections of them (measured: 400 clients × 960 KB, peak RSS 577 MB; an OOM ends every session of the
// process). spool.receivingMemoryBytes bounds what the messages being received hold together: past it, each
// message's further bytes go to its own file in incoming/. Nothing is refused, nothing is lost.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import type { SpoolWriter } from '../../engine/spool/spool.ts';

const BUDGET = 256 * 1024;
const CLIENTS = 8;
const MESSAGE_LINES = 2000; // ~200 KB each, under the journal's 1 MiB: each alone would stay in memory
let server: TestServer;
const writers: SpoolWriter[] = [];

before(async () => {
  server = await startTestServer({
    config: `
localDomains: [example.com]
spool: { receivingMemoryBytes: ${BUDGET} }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`,
    scripts: {
      // The data hook reads the header fields back from the spool (the header reader keeps no copy).
      'data.ts': `export default (ctx) => { const s = ctx.data.headers.find(([k]) => k === 'Subject');
        if (!s || !s[1].startsWith('client ') || ctx.data.headers.length !== 3) return reject('fields: ' + JSON.stringify(ctx.data.headers.slice(0, 5)), { code: 550 }); };`,
    },
  });
  const spool = server.runtime.spool;
  const create = spool.create.bind(spool);
  spool.create = (id: string, maxHeld?: number) => {
    const w = create(id, maxHeld);
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

function body(i: number): string {
  const lines = Array.from({ length: MESSAGE_LINES }, (_, n) => `client ${i} line ${n} ${'z'.repeat(80)}`);
  return `Subject: client ${i}\r\nFrom: <a@example.com>\r\nX-Folded: a\r\n b\r\n\r\n${lines.join('\r\n')}\r\n`;
}

test(`${CLIENTS} clients in the middle of ~200 KB messages hold at most spool.receivingMemoryBytes; all are accepted intact`, async () => {
  const clients: SmtpTestClient[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    clients.push(c);
  }
  // Every message but its final dot: all are in flight at once.
  for (const [i, c] of clients.entries()) c.socket.write(body(i));
  const expected = clients.map((_, i) => Buffer.byteLength(body(i)));
  const received = (): number => writers.reduce((n, w) => n + w.bytes, 0);
  const client = expected.reduce((a, b) => a + b, 0);
  await until('every message byte received', () => received() >= client, { timeoutMs: 60_000 });
  const held = server.runtime.spool.heldBytes;
  assert.ok(held <= BUDGET + 64 * 1024, `the messages being received hold ${held} bytes in memory (budget ${BUDGET})`);
  assert.ok(client > 4 * BUDGET, 'the test sends far more than the budget');
  // What is not in memory is in the messages' files.
  assert.ok(await incomingBytes() >= client - BUDGET - 64 * 1024, `incoming/ holds ${await incomingBytes()} bytes`);

  const ids: string[] = [];
  for (const c of clients) {
    c.socket.write('.\r\n');
    const reply = await c.read(60_000);
    assert.equal(reply.code, 250, reply.text);
    ids.push(/queued as (\S+)/.exec(reply.text)![1]!);
  }
  for (const [i, id] of ids.entries()) {
    const message = (await server.runtime.spool.readMessage(id)).toString();
    assert.ok(message.endsWith(body(i)), `message ${i} spooled intact`);
  }
  assert.equal(server.runtime.spool.heldBytes, 0, 'nothing counted as held once every message was committed');
  assert.equal(await incomingBytes(), 0);
  for (const c of clients) await c.quit();
});

test('a message refused at its end (and one whose client left mid-DATA) gives its held bytes back', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const refused = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: nope\r\n\r\nbody\r\n');
  assert.equal(refused.code, 550, refused.text);
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  const before = writers.length;
  assert.equal((await c.command('DATA')).code, 354);
  c.socket.write('Subject: client 0\r\n\r\n' + 'x'.repeat(10_000) + '\r\n');
  await until('the message is being received', () => (writers[before]?.bytes ?? 0) > 10_000);
  c.destroy();
  await until('nothing held once the client is gone', () => server.runtime.spool.heldBytes === 0);
  assert.equal(await incomingBytes(), 0);
});

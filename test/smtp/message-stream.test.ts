// DATA on a MessageStream (engine/smtp/message-stream.ts) instead of smtp-server's PassThrough: the parser
// still switches to data mode as smtp-server's own does, and a message arrives whole, unescaped, on a real
// socket, whether the intake reads it or refuses it before reading.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { MessageStream, useMessageStream } from '../../engine/smtp/message-stream.ts';
import { reply } from '../../engine/smtp/replies.ts';

let server: TestServer;
let failCreate = 0;

before(async () => {
  server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('mx', { tls: { mode: 'none' } })] } as never),
  });
  // The intake can be made to fail before it reads the message: smtp-server must then drain it itself.
  const spool = server.runtime.spool;
  const create = spool.create.bind(spool);
  spool.create = (id: string) => {
    if (failCreate > 0) {
      failCreate--;
      throw reply('localError', { id: 'test' });
    }
    return create(id);
  };
});
after(() => server.stop());

/** The parser's own plain fields (its mode, counters and limits), not the stream or Node's stream state. */
function ownFields(o: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (typeof v !== 'object' && typeof v !== 'function') out[k] = v;
  return out;
}

test('the parser switches to data mode as smtp-server\'s own does, with a MessageStream', () => {
  const theirs = new SMTPStream();
  const ours = new SMTPStream();
  useMessageStream(ours);
  const theirStream = theirs.startDataMode(1000) as unknown as { byteLength: number; sizeExceeded: boolean };
  const ourStream = ours.startDataMode(1000);
  assert.ok(ourStream instanceof MessageStream, 'this smtp-server version gets the MessageStream');
  assert.deepEqual(ownFields(ours), ownFields(theirs));
  assert.equal((ours as unknown as { _dataStream: unknown })._dataStream, ourStream);
  assert.equal(ourStream.byteLength, theirStream.byteLength);
  assert.equal(ourStream.sizeExceeded, theirStream.sizeExceeded);
});

test('a stream nobody reads holds what is written, then on resume() gives it out, drains, ends and closes in order', async () => {
  const s = new MessageStream();
  const events: string[] = [];
  assert.equal(s.write(Buffer.from('a')), false, 'held: the writer must wait for drain');
  s.end(Buffer.from('b'));
  s.on('end', () => events.push('end'));
  s.on('drain', () => events.push('drain'));
  await new Promise<void>((resolve) => {
    s.on('close', () => { events.push('close'); resolve(); });
    s.on('data', (c: Buffer) => events.push(`data ${c.toString()}`));
  });
  assert.deepEqual(events, ['data a', 'data b', 'drain', 'end', 'close']);
  assert.equal(s.readable, false);
  assert.equal(s.readableEnded, true);
});

test('a destroyed stream tells its error listener, then closes; without one it only closes', async () => {
  const s = new MessageStream();
  const events: string[] = [];
  s.on('data', () => events.push('data'));
  s.on('error', (err: Error) => events.push(`error ${err.message}`));
  await new Promise<void>((resolve) => {
    s.on('close', () => { events.push('close'); resolve(); });
    s.destroy(new Error('gone'));
  });
  assert.deepEqual(events, ['error gone', 'close']);
  assert.equal(s.write(Buffer.from('late')), false);
  const quiet = new MessageStream();
  await new Promise<void>((resolve) => { quiet.on('close', resolve); quiet.destroy(new Error('nobody listens')); });
});

test('a dot-stuffed message pipelined with the next command is spooled unescaped, and the command is answered', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  // Every escaped dot splits the message into another write to the stream.
  c.socket.write('Subject: dots\r\n\r\n..leading\r\nplain\r\n...\r\n..\r\nend\r\n.\r\nNOOP\r\n');
  const queued = await c.read();
  assert.equal(queued.code, 250, queued.text);
  assert.equal((await c.read()).code, 250, 'the NOOP after the message');
  const id = /queued as (\S+)/.exec(queued.text)![1]!;
  const message = (await server.runtime.spool.readMessage(id)).toString();
  assert.ok(message.endsWith('Subject: dots\r\n\r\n.leading\r\nplain\r\n..\r\n.\r\nend\r\n'), message);
  await c.quit();
});

test('a message the intake refuses before reading it is read to its end by smtp-server; the next one is spooled', async () => {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const before = (await server.runtime.spool.list()).length;
  failCreate = 1;
  const refused = await c.sendMail('a@example.com', ['b@example.com'], `Subject: refused\r\n\r\n${'x'.repeat(200_000)}\r\n`);
  assert.equal(refused.code, 451, refused.text);
  const next = await c.sendMail('a@example.com', ['b@example.com']);
  assert.equal(next.code, 250, next.text);
  assert.equal((await server.runtime.spool.list()).length, before + 1);
  await c.quit();
});

// Delivery in 64 KiB pieces (engine/delivery/message-pieces.ts), DKIM fields in front: a first MX that drops the
// connection part way through the message (the next MX then gets it in the same attempt), and a connection used again after a message refused at its end, must
// leave the next transaction's bytes whole: the next MX, or the next message on the connection, gets the spooled
// body (CRLF line ends), and dkimpy verifies the signature.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { DKIM_LOGIN } from '../helpers/dkim-delivery.ts';
import { LOGIN_ANYONE } from '../helpers/smtp-client.ts';
import { dkimKeyPair, verifyDkim } from '../helpers/dkim.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { retryMessages } from '../../engine/queue/admin.ts';

const scratch = useScratchDir('postern-pieces-failover-');
const BODY = '.\r\naé\r\nxy\r\n'.repeat(40_000); // dots, UTF-8 and CRLFs at every kind of piece boundary

// Larger than the socket buffers usually take while the first MX reads nothing (a 4 MiB send buffer at most): its
// drop comes before the whole message has gone out (the reply is not asserted: the buffers are the kernel's). Over
// 1 MiB: a file of its own, read under delivery.maxBytesInMemory.
const BIG = BODY.repeat(13);

function bodyOf(copy: Buffer): string {
  const s = copy.toString('utf8');
  return s.slice(s.indexOf('\r\n\r\n') + 4);
}

async function signingConfig(port: number, extra: Record<string, unknown> = {}): Promise<{ yaml: string; records: Record<string, string> }> {
  const pair = dkimKeyPair('rsa');
  const yaml = configYaml({
    hostname: 'postern.test',
    listeners: [testListener('in', { auth: { mechanisms: ['PLAIN'] } })], // logged in: the sender domain's key signs
    delivery: {
      enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600],
      dkim: { com: { domain: 'example.com', selector: 'sel', privateKey: await scratch.file('com.key', pair.privateKey), senderDomains: ['example.com'] } },
      ...extra,
    },
  });
  return { yaml, records: { 'sel._domainkey.example.com.': pair.txt } };
}

test('a first MX that drops the connection part way through the message: the next MX gets it whole, and it verifies', async () => {
  const sink = await startSink({ size: 64 * 1024 * 1024 });
  let cut = 0;
  // Same port as the sink, on another loopback address: MX route ports are one for all hosts.
  const dropper = await startScriptedPeer({
    data: (s) => {
      s.write('354 go on\r\n');
      s.removeAllListeners('data');
      s.once('data', () => { cut++; s.destroy(); });
      return 'stop';
    },
  }, '127.0.0.2', sink.port);
  const { yaml, records } = await signingConfig(sink.port);
  const s = await startDeliveryServer({
    config: yaml,
    scripts: { 'rcptto.ts': 'export default () => accept();', 'auth.ts': LOGIN_ANYONE },
    login: DKIM_LOGIN,
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx1.dest.test', priority: 10 }, { exchange: 'mx2.dest.test', priority: 20 }] },
      { 'mx1.dest.test': ['127.0.0.2'], 'mx2.dest.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@example.com', ['b@dest.test'], `From: <a@example.com>\r\nTo: <b@dest.test>\r\nSubject: failover\r\n\r\n${BIG}`);
    // A connection lost before the final dot went out: the next MX gets the message in the same attempt, from its
    // first piece. (Should the kernel's buffers have taken the whole message before the drop, its end went out
    // without a verdict: deferred, as the first MX may have it, and the retry finds the first MX gone.)
    let e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(cut, 1, 'the first MX took part of the message and dropped the connection');
    dropper.close();
    if (e.outcomes[0]!.status === 'temporary') {
      assert.match(e.outcomes[0]!.reply, /may have it/);
      await retryMessages(s.spools, 'all'); // `postern queue retry --all`
      e = await s.nextAttempt((x) => x.id === id && x.attempt === 2, { past: true, timeoutMs: 60_000 });
    }
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    const copy = sink.messages.find((m) => m.data.toString().includes(` id ${id}`))!.data;
    assert.ok(bodyOf(copy) === BIG, 'the body as sent');
    assert.deepEqual(await verifyDkim(copy, records), [true]);
  } finally {
    await s.stop();
    dropper.close();
    await sink.close();
  }
});

test('a connection used again after a message refused at its end: the next message on it is whole, and it verifies', async () => {
  let ends = 0;
  // The first message's end is refused (whichever the queue sends first); the other follows on the same connection.
  const sink = await startSink({ decide: (stage) => (stage === 'data' && ++ends === 1 ? { code: 554, text: '5.7.1 refused at the end' } : null) });
  const { yaml, records } = await signingConfig(sink.port, { concurrency: 1, perDestinationConcurrency: 1 });
  const s = await startDeliveryServer({
    config: yaml,
    scripts: { 'rcptto.ts': 'export default () => accept();', 'auth.ts': LOGIN_ANYONE },
    login: DKIM_LOGIN,
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
  });
  try {
    const message = `From: <a@example.com>\r\nTo: <b@dest.test>\r\nSubject: reuse\r\n\r\n${BODY}`;
    const ids = [await s.send('a@example.com', ['b@dest.test'], message), await s.send('a@example.com', ['c@dest.test'], message)];
    const events = await Promise.all(ids.map((id) => s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 })));
    assert.deepEqual(events.map((e) => e.outcomes[0]!.status).sort(), ['delivered', 'permanent']);
    assert.equal(sink.connections, 1, 'both on one connection');
    assert.equal(sink.messages.length, 1);
    const copy = sink.messages[0]!.data;
    assert.ok(bodyOf(copy) === BODY, 'the body as sent');
    assert.deepEqual(await verifyDkim(copy, records), [true]);
  } finally {
    await s.stop();
    await sink.close();
  }
});

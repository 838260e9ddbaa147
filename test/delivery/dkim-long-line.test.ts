// DKIM signing of a message with a very long line: given the message as one Buffer, mailauth (the signer before
// engine/delivery/dkim-signature.ts) cut it in 64 KiB pieces and joined the line it had not seen the end of onto
// each next piece, scanning it all again, in one turn of the event loop. Quadratic in the line's length: a 16 MB line held the queue process's thread for
// seconds, and its watchdog (1 s) killed the process at every attempt of that message (the second test, with postern serve). The bytes Buffer.concat
// produces while signing count the copying, whatever the machine's speed: about the message once now.
import { test, after, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { dkimKeyPair, verifyDkim } from '../helpers/dkim.ts';
import { signMessage, type DkimKey } from '../../engine/delivery/dkim.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startCluster, workerPid, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

test('signing a message whose body is one 4 MB line copies it about once, and the signature verifies', async () => {
  const rsa = dkimKeyPair('rsa');
  const key: DkimKey = {
    name: 'k', domain: 'example.com', selector: 'sel', algorithm: 'rsa-sha256', id: 'k',
    privateKey: createPrivateKey(rsa.privateKey),
  };
  const message = Buffer.concat([Buffer.from('From: <a@example.com>\r\nSubject: long line\r\n\r\n'), Buffer.alloc(4_000_000, 'ab \t'), Buffer.from('\r\n')]);
  const concat = Buffer.concat;
  let copied = 0;
  Buffer.concat = ((list: readonly Uint8Array[], length?: number) => {
    const out = concat(list, length);
    copied += out.length;
    return out;
  }) as typeof Buffer.concat;
  let signed: Buffer;
  try {
    signed = await signMessage(message, [key]);
  } finally {
    Buffer.concat = concat;
  }
  assert.ok(copied < 3 * message.length, `Buffer.concat produced ${copied} bytes for a message of ${message.length}`);
  assert.deepEqual(await verifyDkim(signed, { 'sel._domainkey.example.com.': rsa.txt }), [true]);
});

/** The server both tests below deliver through (started by the first), its next hop and its DKIM key. */
let served: { c: ClusterProcess; sink: Sink; txt: string } | null = null;
after(async () => {
  await served?.c.stop();
  await served?.sink.close();
});

async function server(): Promise<{ c: ClusterProcess; sink: Sink; txt: string }> {
  if (served) return served;
  const rsa = dkimKeyPair('rsa');
  // 40 MB: the larger message below, its CRs made CRLF.
  const sink = await startSink({ size: 40 * 1024 * 1024 });
  const c = await startCluster({
    config: `${ONE_WORKER}${deliveryToSink(sink.port, { retrySchedule: [1] })}` +
      `  dkim:\n    com: { domain: example.com, selector: sel, privateKey: com.key, senderDomains: [example.com] }\n`,
    files: { 'com.key': rsa.privateKey },
    // Named by the script: its clients do not log in, and the sender domain's key signs only a logged-in client's mail.
    scripts: { 'predelivery.ts': 'export default () => deliver({ dkim: "com" });\n' },
  }).catch(async (err: unknown) => { await sink.close(); throw err; });
  served = { c, sink, txt: rsa.txt };
  return served;
}

/**
 * Under postern serve (one worker, the queue process with its 1 s watchdog): `body` submitted, signed with the DKIM
 * key its predelivery script names, must reach the sink, signed so that the signature verifies. Before each fix below, every
 * attempt of such a message held the queue process's thread for seconds and its watchdog killed it: the message
 * never went out (nor did any other). Whether a machine loaded far beyond its cores still stretches one of the
 * short steps left past the watchdog's second is the load's, not asserted here. Both tests share one server: each
 * message is the only one in its queue while it goes out.
 */
async function deliveredSigned(t: TestContext, body: string): Promise<void> {
  const { c, sink, txt } = await server();
  const first = sink.messages.length;
  const firstLog = c.logs.length;
  await workerPid(c, 0);
  const client = await SmtpTestClient.connect(c.port('in'));
  try {
    await client.read(30_000);
    await client.command('EHLO client.test', 30_000);
    const r = await client.sendMail('a@example.com', ['user@example.test'], body);
    assert.equal(r.code, 250, r.text);
  } finally {
    client.destroy();
  }
  const copy = (await sink.waitFor(first + 1, 180_000))[first];
  assert.deepEqual(await verifyDkim(copy!.data, { 'sel._domainkey.example.com.': txt }), [true]);
  const kills = c.logs.slice(firstLog).filter((l) => /hung/.test(String(l.msg))).length;
  if (kills) t.diagnostic(`queue process killed as hung ${kills} time(s) (machine load)`);
}

test('postern serve: a DKIM-signed message with a 24 MB line is delivered and verifies (its signing killed the queue process at every attempt)', { timeout: 240_000 }, async (t) => {
  await deliveredSigned(t, `From: <a@example.com>\r\nSubject: long line\r\n\r\n${'a'.repeat(24_000_000)}\r\n`);
});

test('postern serve: a DKIM-signed message of 24 MB of short lines ended by bare CRs is delivered and verifies (making them CRLF held the queue process past its watchdog)', { timeout: 240_000 }, async (t) => {
  // Before signing, every bare CR and bare LF is made CRLF, as the SMTP client sends it: with a regex over the
  // message as one string (some 1.5 to 2 s of CPU for these 24 MB, in one turn of the queue process), and a native
  // search per line end even when nothing was to change. Now two passes over the bytes.
  await deliveredSigned(t, `From: <a@example.com>\r\nSubject: bare CRs\r\n\r\n${'ab\r'.repeat(8_000_000)}\r\n`);
});

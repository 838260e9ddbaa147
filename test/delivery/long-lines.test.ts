// Lines over RFC 5321's 1000 octets (998 and CRLF). A client may send them, and Postern takes them as Postfix does;
// but it relayed them as they were, and a next hop that holds to the limit refuses such a message after its dot
// (Exim will not relay it at all), so a message Postern had accepted bounced. Now, as Postfix's
// smtp_line_length_limit, a longer line is broken on the way out by a line end and a space (before a space of the
// line when it has one, never inside a UTF-8 character): every line on the wire is within 998 octets, a header
// stays the same field with the same value, and the DKIM signature Postern adds verifies. The spool keeps the
// message as it came. The next hop is a raw socket that refuses a line over 998 octets, as such hosts do.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { startRawSink } from '../helpers/raw-sink.ts';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery } from '../helpers/dkim-delivery.ts';
import { HeaderReader } from '../../engine/smtp/header-reader.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { withLinesWithin } from '../../engine/delivery/line-length.ts';

const setup = useSigningDelivery({ com: { type: 'rsa', domain: 'example.com', selector: 'sel', senderDomains: ['example.com'] } }, undefined,
  () => startRawSink({ maxLineOctets: 998, eightBitMime: true }));

/** What was sent: the message on the wire for queue id `id`, dot-stuffing undone. */
async function sent(id: string): Promise<string> {
  const e = await setup.server.nextAttempt((x) => x.id === id, { past: true });
  assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  const wire = setup.sink.messages.find((m) => m.includes(` id ${id}`))!;
  for (const line of wire.toString('latin1').split('\r\n')) assert.ok(line.length <= 998 + (line.startsWith('..') ? 1 : 0), `a line of ${line.length} octets was sent`);
  assert.deepEqual(await verifyDkim(wire, setup.records), [true], 'the DKIM signature Postern added verifies');
  return wire.toString('latin1').replace(/^\./gm, '');
}

const RECIPIENTS = Array.from({ length: 200 }, (_, i) => `user${i}@example.net`);

test('a header of 200 addresses and a body line of 2500 octets: delivered, every line within 998 octets, the header the same field', async () => {
  const body = `${'x'.repeat(2500)}\r\n`;
  const id = await setup.server.send('a@example.com', ['b@example.net'], `From: <a@example.com>\r\nTo: ${RECIPIENTS.join(', ')}\r\nSubject: long\r\n\r\n${body}`);
  const text = await sent(id);
  const reader = new HeaderReader(1 << 20);
  reader.push(Buffer.from(text, 'latin1'));
  const to = reader.headers().find(([name]) => name === 'To')![1];
  assert.deepEqual(to.split(/,\s*/), RECIPIENTS, 'unfolded, the field holds the same addresses');
  const lines = text.slice(text.indexOf('\r\n\r\n') + 4).split('\r\n');
  assert.deepEqual(lines.map((l) => l.length), [998, 998, 506, 0], 'the body line cut at the limit, each continuation with a space in front');
  assert.equal(lines.map((l, i) => (i ? l.slice(1) : l)).join(''), 'x'.repeat(2500));
  const { message } = await setup.server.runtime.spool.readForDelivery(id).catch(() => ({ message: null }));
  assert.equal(message, null, 'delivered and removed');
});

test('a long line of UTF-8 text is never cut inside a character', async () => {
  const line = 'é'.repeat(1500); // 3000 octets
  const id = await setup.server.send('a@example.com', ['b@example.net'], `From: <a@example.com>\r\nSubject: utf-8\r\n\r\n${line}\r\n`);
  const text = Buffer.from(await sent(id), 'latin1');
  const body = text.subarray(text.indexOf('\r\n\r\n') + 4).toString('utf8');
  assert.ok(!body.includes('\ufffd'), 'every character whole');
  assert.equal(body.split('\r\n').map((l, i) => (i ? l.slice(1) : l)).join(''), `${line}`);
});

test('lineLengthLimit 0: lines go out as they are (and the host that holds to the limit refuses them)', async () => {
  const t = await startDeliveryServer({
    config: configYaml({ hostname: 'postern.test', listeners: [testListener('in')], delivery: smarthostDelivery(setup.sink.port, { retrySchedule: [3600], lineLengthLimit: 0 }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const id = await t.send('a@example.com', ['b@example.net'], `Subject: as is\r\n\r\n${'y'.repeat(1200)}\r\n`);
    const e = await t.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'permanent');
    assert.match(e.outcomes[0]!.reply, /500 5\.5\.2 Line too long/);
  } finally {
    await t.stop();
  }
});

test('lineLengthLimit below 78 (but 0) is a configuration error naming the file and line', () => {
  const yaml = configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(25, { lineLengthLimit: 10 }) });
  assert.throws(() => parseConfig(yaml, '/etc/postern.yaml', '/etc'),
    /\/etc\/postern\.yaml:\d+:\d+: delivery\.lineLengthLimit: expected 0 \(lines sent as they are\) or at least 78/);
  assert.equal(parseConfig(yaml.replace('lineLengthLimit: 10', 'lineLengthLimit: 0'), '/etc/postern.yaml', '/etc').config.delivery.lineLengthLimit, 0);
});

/** CPU milliseconds `f` takes (a guard only: the cost it guards against is minutes). */
function cpuMs(f: () => void): number {
  const start = process.cpuUsage();
  f();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

/** Every line of `out` (ended by LF or a bare CR) is at most `limit` octets. */
function longestLine(out: Buffer): number {
  let longest = 0;
  for (const line of out.toString('latin1').split(/\r\n|\r|\n/)) longest = Math.max(longest, line.length);
  return longest;
}

test('long lines cut by bare CRs, one LF at the end: each byte is looked at once, not the message once per long line', () => {
  // 8 MB of 80-octet lines ended by bare CRs, over a limit of 78: the search for each line's LF ran to the
  // message's end and the window's back to its start (about 95 s here), in the queue process, whose watchdog kills it at 1 s.
  const message = Buffer.from(`${'x'.repeat(80)}\r`.repeat(100_000) + '\n', 'latin1');
  let out: Buffer = Buffer.alloc(0);
  const ms = cpuMs(() => { out = withLinesWithin(message, 78); });
  assert.ok(ms < 5000, `${ms} ms of CPU`);
  assert.equal(longestLine(out), 78);
  assert.equal(out.length, message.length + 100_000 * 3, 'each line cut once (CR LF and a space)');
});

test('a line of blanks only, megabytes long: each cut looks back over its room once', () => {
  // Each cut searched its room again for every blank of the run it was in: the room's square per cut (some
  // 20 s for 8 MB at a limit of 1,000,000; at the default 998 some 90 ns an octet, 2 s for a 25 MB line).
  const message = Buffer.from(`x${' '.repeat(8_000_000)}\r\n`, 'latin1');
  let out: Buffer = Buffer.alloc(0);
  const ms = cpuMs(() => { out = withLinesWithin(message, 1_000_000); });
  assert.ok(ms < 5000, `${ms} ms of CPU`);
  assert.ok(longestLine(out) <= 1_000_000);
  assert.equal(out.toString('latin1').replace(/\r\n /g, ''), message.toString('latin1'), 'only cut, nothing lost');
});

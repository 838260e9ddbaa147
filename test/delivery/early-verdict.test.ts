// A next hop that says 250 to the message before the message's final dot was sent (its replies out of step with our
// commands: a stray reply queued behind the 354, a broken proxy answering for the host behind it) was taken at its
// word: nodemailer reads any reply while the message is still going out as the verdict on it, so the recipients were
// recorded delivered and the message left the queue, while the next hop had never seen its end (RFC 5321 §4.1.1.4:
// the receiver keeps the message only once the final dot arrives). Now a 2yz before the end of the message is no
// verdict: the recipients are deferred (the next hop may have something of it, so a duplicate is possible; a loss
// is not), and the connection is not used again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

test('a 250 before the final dot is no verdict on the message: deferred, not recorded delivered', async () => {
  let ends = 0;
  let bytesAfter354 = 0;
  const peer = await startScriptedPeer({
    data: (s) => {
      // The go-ahead and, at once, a "verdict" on a message it has not read yet.
      s.write('354 go on\r\n250 2.0.0 queued as EARLY\r\n');
      s.removeAllListeners('data');
      s.on('data', (d: Buffer) => { bytesAfter354 += d.length; if (d.toString('latin1').includes('\r\n.\r\n')) ends++; });
      return 'stop';
    },
  });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@dest.test', 'c@dest.test'], `Subject: early\r\n\r\n${'line of the message\r\n'.repeat(20_000)}`);
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.deepEqual(e.outcomes.map((o) => o.status), ['temporary', 'temporary'], e.outcomes[0]!.reply);
    assert.match(e.outcomes[0]!.reply, /250 2\.0\.0 queued as EARLY.*before the end of the message/);
    await until('the connection closed or the message out', () => bytesAfter354 > 0, { timeoutMs: 60_000 });
    assert.ok(ends <= 1);
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a blank line after the 354 is no reply: the verdict after the final dot counts, delivered', async () => {
  const blank = await startScriptedPeer({
    data: (s) => {
      s.write('354 go on\r\n\r\n');
      let buf = '';
      s.removeAllListeners('data');
      s.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        if (buf.includes('\r\n.\r\n')) { buf = ''; s.write('250 2.0.0 queued\r\n'); }
      });
      return 'stop';
    },
  });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: blank.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@dest.test']);
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  } finally {
    await s.stop();
    blank.close();
  }
});

test('a 250 begun before the message and finished after its final dot is no verdict either: deferred', async () => {
  // Its first bytes come with the 354, the rest of its line only once the whole message is in: nodemailer holds the
  // unfinished line apart from its replies, and only completes it after the final dot went out.
  let ends = 0;
  const split = await startScriptedPeer({
    data: (s) => {
      s.write('354 go on\r\n250 2.0.0 queued as SPL');
      let buf = '';
      s.removeAllListeners('data');
      s.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        if (buf.includes('\r\n.\r\n')) { buf = ''; ends++; s.write('IT\r\n'); }
      });
      return 'stop';
    },
  });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: split.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@dest.test']);
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'temporary', e.outcomes[0]!.reply);
    assert.match(e.outcomes[0]!.reply, /queued as SPL.*before the end of the message/);
  } finally {
    await s.stop();
    split.close();
  }
});

test('a 250 begun while the message goes out, its line ended after the final dot: deferred', async () => {
  // The peer stops reading at the message's first bytes and sends the start of a reply: the message (far more than
  // the sockets' buffers hold) cannot be all out before that start is read. Its line ends once the message is in.
  const midway = await startScriptedPeer({
    data: (s) => {
      s.write('354 go on\r\n');
      let buf = '';
      let begun = false;
      s.removeAllListeners('data');
      s.on('data', (d: Buffer) => {
        if (!begun) {
          begun = true;
          s.pause();
          s.write('250 2.0.0 queued as MID', () => setTimeout(() => s.resume(), 100));
        }
        buf = (buf + d.toString('latin1')).slice(-5);
        if (buf.endsWith('\r\n.\r\n')) s.write('WAY\r\n');
      });
      return 'stop';
    },
  });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: midway.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@dest.test'], `Subject: midway\r\n\r\n${'line of the message\r\n'.repeat(600_000)}`);
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'temporary', e.outcomes[0]!.reply);
    assert.match(e.outcomes[0]!.reply, /queued as MIDWAY.*before the end of the message/);
  } finally {
    await s.stop();
    midway.close();
  }
});

test('a refusal before the end of the message: no RSET written into the message still going out, the connection closed', async () => {
  // A next hop that refuses with the 354 (a message it will not take) and reads on. The RSET after the failed
  // transaction went onto the socket in the middle of the message's data, and its reply was awaited (up to
  // endOfDataTimeoutMs) from a next hop that read it as a line of the message.
  let received = '';
  let over = false;
  const refusing = await startScriptedPeer({
    data: (s) => {
      s.write('354 go on\r\n552 5.3.4 message too big for me\r\n');
      s.removeAllListeners('data');
      // Not read for a while: the message cannot be all out before the refusal is read.
      s.pause();
      setTimeout(() => s.resume(), 300);
      s.on('data', (d: Buffer) => { received += d.toString('latin1'); if (received.includes('\r\n.\r\n')) over = true; });
      s.on('close', () => { over = true; });
      return 'stop';
    },
  });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: refusing.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@dest.test'], `Subject: big\r\n\r\n${'line of the message\r\n'.repeat(600_000)}`);
    await until('the message ended or the connection closed', () => over, { timeoutMs: 60_000 });
    assert.ok(!/RSET/.test(received), 'no command inside the message');
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'permanent', e.outcomes[0]!.reply);
    assert.match(e.outcomes[0]!.reply, /552 5\.3\.4/);
  } finally {
    await s.stop();
    refusing.close();
  }
});

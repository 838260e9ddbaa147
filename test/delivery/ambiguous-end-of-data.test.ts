/**
 * A next hop that takes the whole message and then drops the connection (a reset, or no reply before the
 * timeout) may have queued it: SMTP cannot tell (RFC 1047), and retrying is right, with one copy too many
 * at worst. The deferral says so, as Postfix's "message may be sent more than once", instead of a bare
 * "connection failed: read ECONNRESET"; a connection lost before the message went out says nothing of it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

/**
 * A minimal next hop over a real socket: `drop` says where the n-th transaction's connection is reset, or
 * which bytes answer the end of its message instead of a reply.
 */
async function startDroppingPeer(drop: (n: number) => 'rcpt' | 'end-of-data' | { endOfData: string } | null): Promise<{ port: number; messages: number; close(): void }> {
  const state = { messages: 0, transactions: 0 };
  const peer = await startScriptedPeer({
    mail: () => { state.transactions++; },
    rcpt: (s) => (drop(state.transactions) === 'rcpt' ? (s.resetAndDestroy(), 'stop') : undefined),
    endOfData: (s) => {
      state.messages++;
      const fault = drop(state.transactions);
      if (fault === 'end-of-data') return (s.resetAndDestroy(), 'stop');
      if (typeof fault === 'object' && fault) return (s.write(fault.endOfData), 'answered');
    },
  });
  return { port: peer.port, get messages() { return state.messages; }, close: peer.close };
}

for (const where of ['end-of-data', 'rcpt'] as const) {
  test(`the next hop resets the connection ${where === 'rcpt' ? 'at RCPT (nothing sent)' : 'after the end of the message, before its reply'}: retried, and the deferral ${where === 'rcpt' ? 'claims no duplicate' : 'says it may be delivered twice'}`, async () => {
    const peer = await startDroppingPeer((n) => (n === 1 ? where : null));
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
    });
    try {
      const id = await s.send('a@example.test', ['b@example.test']);
      await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
      assert.equal(peer.messages, where === 'rcpt' ? 1 : 2, where === 'rcpt' ? 'one copy' : 'one copy too many at worst, as SMTP permits');
      const deferred = s.logs.find((l) => l.id === id && l.status === 'deferred');
      assert.ok(deferred, 'the first attempt is deferred');
      if (where === 'end-of-data') assert.match(String(deferred.msg), /lost connection after the end of the message, before its reply.*may be delivered more than once/);
      else assert.doesNotMatch(String(deferred.msg), /more than once/);
    } finally {
      await s.stop();
      peer.close();
    }
  });
}

// Answers to the end of the message that are no verdict on it (RFC 5321 §4.2: a 2yz, 4yz or 5yz reply code):
// nodemailer took any first "2" for success, and the deferral of the others did not say the next hop may
// have the message. Each is retried, and says so; a multi-line 250 is a delivery.
for (const endOfData of ['2xx garbage\r\n', '25\r\n', '354 again\r\n', '999 what\r\n', 'hello\r\n', '\x00\xff\r\n']) {
  test(`the next hop answers the end of the message with ${JSON.stringify(endOfData)}: retried, and the deferral says it may be delivered twice`, async () => {
    const peer = await startDroppingPeer((n) => (n === 1 ? { endOfData } : null));
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
    });
    try {
      const id = await s.send('a@example.test', ['b@example.test']);
      await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
      assert.equal(peer.messages, 2);
      const deferred = s.logs.find((l) => l.id === id && l.status === 'deferred');
      assert.ok(deferred, 'the first attempt is deferred');
      assert.match(String(deferred.msg), /malformed reply to the end of the message .*may be delivered more than once/);
      assert.equal(s.logs.filter((l) => l.id === id && l.status === 'sent').length, 1);
    } finally {
      await s.stop();
      peer.close();
    }
  });
}

test('a multi-line 250 to the end of the message is a delivery', async () => {
  const peer = await startDroppingPeer(() => ({ endOfData: '250-2.0.0 queued\r\n250 2.0.0 as 1234\r\n' }));
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
  });
  try {
    const id = await s.send('a@example.test', ['b@example.test']);
    const done = await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
    assert.equal(done.attempt, 1);
    assert.equal(peer.messages, 1);
    assert.equal(s.logs.find((l) => l.id === id && l.status === 'sent')?.reply, '250 2.0.0 queued 2.0.0 as 1234');
  } finally {
    await s.stop();
    peer.close();
  }
});

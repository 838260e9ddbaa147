// nodemailer sent the message after a 2yz reply to DATA as well as after 354 (for "some servers" that answer
// 250). A 2yz is no go-ahead (RFC 5321 §4.3.2): a next hop that answers so is not reading a message, and took
// each of its lines for a command (a "RCPT TO:" in the body made it a recipient); or its replies are out of
// step with our commands (a stale reply). Deferred now, as Postfix does, without the message and without
// using that connection again; recipients refused at RCPT keep their own replies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

for (const pipelining of [false, true]) {
  test(`a 250 in reply to DATA${pipelining ? ' (PIPELINING)' : ''}: the message is not sent into the command stream; deferred, then delivered once`, async () => {
    const seen = { ehlo: 0, rcpt: [] as string[], messages: 0, dataAnswered250: 0, reusedAfter250: false };
    let answered250: unknown = null;
    const peer = await startScriptedPeer({
      ehlo: (s) => { seen.ehlo++; s.write(`250-peer\r\n${pipelining ? '250-PIPELINING\r\n' : ''}250 8BITMIME\r\n`); return 'answered'; },
      rcpt: (s, line) => {
        seen.rcpt.push(line);
        if (/<refused@/.test(line)) { s.write('550 5.1.1 no such user\r\n'); return 'answered'; }
      },
      mail: (s) => { if (s === answered250) seen.reusedAfter250 = true; },
      data: (s) => (seen.dataAnswered250++ === 0 ? (answered250 = s, s.write('250 2.0.0 ok\r\n'), 'answered') : undefined),
      endOfData: (_s, message) => { if (message.includes('RCPT TO:<injected')) seen.messages++; },
    });
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(peer.port, { retrySchedule: [0.1] }) }),
    });
    try {
      const id = await s.send('a@example.test', ['b@example.test', 'refused@example.test'], 'Subject: x\r\n\r\nRCPT TO:<injected@example.test>\r\n');
      const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 30_000, past: true });
      const by = new Map(first.outcomes.map((o) => [o.recipient, o]));
      assert.equal(by.get('b@example.test')?.status, 'temporary');
      assert.match(by.get('b@example.test')!.reply, /250 2\.0\.0 ok in reply to DATA command, not a go-ahead \(354\): the message was not sent/);
      assert.equal(by.get('refused@example.test')?.status, 'permanent', 'refused at RCPT: its own reply');
      await s.nextAttempt((e) => e.id === id && e.removed, { timeoutMs: 30_000, past: true });
      assert.ok(!seen.rcpt.some((l) => /injected/.test(l)), `no line of the message taken for a command: ${seen.rcpt.join(' | ')}`);
      assert.equal(seen.messages, 1, 'delivered once');
      // Counted by connection, not by EHLOs: a loaded machine may open one more connection for the retry.
      assert.equal(seen.reusedAfter250, false, 'the connection that got 250 to DATA was not used again');
      assert.ok(seen.ehlo >= 2);
    } finally {
      await s.stop();
      peer.close();
    }
  });
}

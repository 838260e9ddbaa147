// What a next hop says ends up in our state files, logs, the previousErrors a predelivery script is given and
// the bounces we send: a reply of one line of nearly 1 MB (nodemailer's limit per reply) was kept whole —
// every attempt's state file carried up to 20 of them, each log line one, and the DSN a line far past RFC
// 5322's 998 (a next hop refuses such a bounce: lost). A refusal at the greeting or EHLO was kept with its
// control characters (an ESC sequence for the operator's terminal, in the log and in the bounce's text).
// Each reply is now one line of at most 1000 characters, without control characters, wherever it goes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startSink } from '../helpers/sink.ts';
import { fakeResolver, parseDsn, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const HUGE = 'x'.repeat(900_000);
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

test('a next hop\'s huge or control-laden replies are kept as one bounded line in state, logs and bounces', async () => {
  const sink = await startSink();
  const peer = await startScriptedPeer({
    rcpt: (s) => {
      s.write(`450 4.2.0 ${HUGE}\r\n`);
      return 'answered';
    },
  }, '127.0.0.6', sink.port);
  const greeting = await startScriptedPeer({
    ehlo: (s) => {
      s.write(`421-4.7.0 \x1b]0;owned\x07 go away ${'y'.repeat(5000)}\r\n421 4.7.0 \x1b[2J bye ${HUGE}\r\n`);
      return 'answered';
    },
  }, '127.0.0.7', sink.port);
  const refusing = await startScriptedPeer({
    rcpt: (s) => {
      s.write(`550 5.1.1 \x1b[31m ${HUGE}\r\n`);
      return 'answered';
    },
  }, '127.0.0.8', sink.port);
  const s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({
      'huge.test': [{ exchange: 'mx.huge.test', priority: 10 }],
      'greeting.test': [{ exchange: 'mx.greeting.test', priority: 10 }],
      'refusing.test': [{ exchange: 'mx.refusing.test', priority: 10 }],
      'origin.test': [{ exchange: 'mx.origin.test', priority: 10 }],
    }, { 'mx.huge.test': ['127.0.0.6'], 'mx.greeting.test': ['127.0.0.7'], 'mx.refusing.test': ['127.0.0.8'], 'mx.origin.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['x@huge.test', 'y@greeting.test', 'z@refusing.test']);
    const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 60_000, past: true });
    for (const o of e.outcomes) {
      assert.ok(o.reply.length <= 1100, `${o.recipient}: a reply of ${o.reply.length} characters kept`);
      assert.doesNotMatch(o.reply, CONTROL, `${o.recipient}: control characters kept: ${JSON.stringify(o.reply.slice(0, 200))}`);
    }
    const state = await s.spools.readState(id);
    assert.ok(state, 'deferred recipients left: a state');
    assert.ok(JSON.stringify(state).length < 10_000, `state of ${JSON.stringify(state).length} characters`);
    for (const l of s.logs.filter((x) => x.id === id)) assert.ok(JSON.stringify(l).length < 10_000, `a log line of ${JSON.stringify(l).length} characters`);
    // The bounce goes to the sender's MX: the sink, on the peers' port at 127.0.0.1.
    const [bounce] = await sink.waitFor(1, 60_000);
    const raw = bounce!.data;
    for (const line of raw.toString('latin1').split('\r\n')) {
      assert.ok(Buffer.byteLength(line, 'latin1') <= 998, `a bounce line of ${line.length} bytes`);
      assert.doesNotMatch(line, CONTROL, `control characters in the bounce: ${JSON.stringify(line.slice(0, 200))}`);
    }
    assert.deepEqual(parseDsn(raw).recipients.map((r) => r['final-recipient']), ['rfc822; z@refusing.test']);
  } finally {
    await s.stop();
    peer.close();
    greeting.close();
    refusing.close();
    await sink.close();
  }
});

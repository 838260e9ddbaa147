// A next hop that answered EHLO with a 4xx (a temporary refusal: load, a lookup that failed) was sent HELO instead, as
// nodemailer does for any EHLO refusal. RFC 5321 §4.1.4 has HELO stand in for an EHLO the server does not know (a 5xx,
// as 500 or 502), not for a temporary failure; and a HELO session has no extensions: an 8-bit message then bounced
// for good (5.6.3, no 8BITMIME) over what the next hop had said was temporary, and in `may` mode mail went without
// STARTTLS. Now a 4xx to EHLO fails that session as a 4xx greeting would: the next address or MX host is tried, or the
// mail waits for its retry. A 5xx to EHLO still falls back to HELO.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

test('a 4xx to EHLO: no HELO session, the 8-bit message goes to the backup MX instead of bouncing', async () => {
  const backup = await startSink();
  let mailInHeloSession = 0;
  const primary = await startScriptedPeer({
    ehlo: (s, line) => {
      if (/^HELO/i.test(line)) return undefined;
      s.write('450 4.3.2 not now, try again later\r\n');
      return 'answered';
    },
    mail: () => { mailInHeloSession++; return undefined; },
  }, '127.0.0.40', backup.port);
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: backup.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx1.dest.test', priority: 10 }, { exchange: 'mx2.dest.test', priority: 20 }] },
      { 'mx1.dest.test': ['127.0.0.40'], 'mx2.dest.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@dest.test'], 'Subject: 8-bit\r\n\r\nGrüße aus Köln\r\n');
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    assert.equal(mailInHeloSession, 0, 'no transaction in a HELO session with the first MX');
    assert.equal(backup.messages.length, 1);
  } finally {
    await s.stop();
    primary.close();
    await backup.close();
  }
});

test('a 502 to EHLO (a next hop that knows only HELO): the message goes over HELO, as before', async () => {
  const peer = await startScriptedPeer({ ehlo: (s) => { s.write('502 5.5.2 command not recognized\r\n'); return 'answered'; } });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'old.test': [{ exchange: 'mx.old.test', priority: 10 }] }, { 'mx.old.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@old.test'], 'Subject: 7-bit\r\n\r\nhello\r\n');
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  } finally {
    await s.stop();
    peer.close();
  }
});

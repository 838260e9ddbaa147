// A first MX that fails the transaction before it has the message (a 4xx to MAIL FROM or to every RCPT TO, a 421,
// the connection dropped at DATA) left its recipients deferred until the next retry, the backup MX never tried in
// that attempt: RFC 5321 §5.1 has the client try the next address of the list until delivery succeeds, and Postfix
// keeps such recipients for the next MX host. A greylisting primary held every message for a retry delay while an
// open backup sat idle. Now the recipients a next hop failed temporarily, before the message went out, go on to the
// next address and MX host in the same attempt. A permanent refusal still bounces there, and a failure after the
// final dot (a 4xx verdict: no next MX; a lost reply: it may have the message) still defers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { startSink } from '../helpers/sink.ts';
import { startScriptedPeer, type PeerHooks, type ScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

/** Each first MX's failure, by its domain: `<name>.test`, first MX on its own loopback address, backup on 127.0.0.1. */
const primaries: Record<string, PeerHooks> = {
  'mail451': { mail: (s) => { s.write('451 4.7.1 greylisted, try again later\r\n'); return 'answered'; } },
  'mail421': { mail: (s) => { s.end('421 4.3.2 shutting down\r\n'); return 'stop'; } },
  'ehlo421': { ehlo: (s) => { s.end('421 4.3.2 shutting down\r\n'); return 'stop'; } },
  // A greeting not in SMTP's form (no reply code): that host's protocol error, as Postfix takes it (malformed-replies.ts).
  'greetmalformed': { greeting: (s) => { s.write('mx1 ESMTP ready\r\n'); return 'answered'; } },
  'rcpt450': { rcpt: (s) => { s.write('450 4.2.0 greylisted\r\n'); return 'answered'; } },
  // One recipient refused for good, the other greylisted: only the greylisted one goes on.
  'rcptmixed': { rcpt: (s, line) => { s.write(/<gone@/.test(line) ? '550 5.1.1 no such user\r\n' : '451 4.7.1 greylisted\r\n'); return 'answered'; } },
  'datadrop': { data: (s) => { s.destroy(); return 'stop'; } },
  'mail550': { mail: (s) => { s.write('550 5.7.1 sender refused\r\n'); return 'answered'; } },
  'dot451': { endOfData: (s) => { s.write('451 4.3.0 try again later\r\n'); return 'answered'; } },
  'dotdrop': { endOfData: (s) => { s.destroy(); return 'stop'; } },
};

test('a first MX that fails before it has the message: the backup MX gets it in the same attempt; after the dot, or for good, it does not', async () => {
  const backup = await startSink();
  const names = Object.keys(primaries);
  const peers: ScriptedPeer[] = [];
  const seen: Record<string, number> = {};
  for (const [i, name] of names.entries()) {
    const hooks = primaries[name]!;
    const counted: PeerHooks = { ...hooks, greeting: (peer: net.Socket) => { seen[name] = (seen[name] ?? 0) + 1; return hooks.greeting?.(peer); } };
    peers.push(await startScriptedPeer(counted, `127.0.0.${i + 2}`, backup.port));
  }
  const mx = Object.fromEntries(names.map((n) => [`${n}.test`, [{ exchange: `mx1.${n}.test`, priority: 10 }, { exchange: `mx2.${n}.test`, priority: 20 }]]));
  const hosts = Object.fromEntries(names.flatMap((n, i) => [[`mx1.${n}.test`, [`127.0.0.${i + 2}`]], [`mx2.${n}.test`, ['127.0.0.1']]]));
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: backup.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver(mx, hosts),
  });
  try {
    const ids: Record<string, string> = {};
    for (const name of names) {
      ids[name] = await s.send('a@origin.test', name === 'rcptmixed' ? [`gone@${name}.test`, `b@${name}.test`] : [`b@${name}.test`, `c@${name}.test`]);
    }
    const first: Record<string, string[]> = {};
    for (const name of names) {
      const e = await s.nextAttempt((x) => x.id === ids[name], { past: true, timeoutMs: 60_000 });
      first[name] = e.outcomes.map((o) => `${o.recipient} ${o.status}`);
      assert.equal(seen[name], 1, `${name}: the first MX was tried once`);
    }
    const atBackup = (name: string): string[] => backup.messages.filter((m) => m.to.some((t) => t.endsWith(`@${name}.test`))).flatMap((m) => m.to).sort();
    const both = (name: string, status: string): string[] => [`b@${name}.test ${status}`, `c@${name}.test ${status}`];
    for (const name of ['mail451', 'mail421', 'ehlo421', 'greetmalformed', 'rcpt450', 'datadrop']) {
      assert.deepEqual(first[name], both(name, 'delivered'), `${name}: delivered by the backup MX in the first attempt`);
      assert.deepEqual(atBackup(name), [`b@${name}.test`, `c@${name}.test`], `${name}: once each at the backup`);
    }
    assert.deepEqual(first.rcptmixed, ['gone@rcptmixed.test permanent', 'b@rcptmixed.test delivered'], 'the refused one bounces, the greylisted one goes on');
    assert.deepEqual(atBackup('rcptmixed'), ['b@rcptmixed.test']);
    assert.deepEqual(first.mail550, both('mail550', 'permanent'), 'a permanent refusal bounces: no backup tried');
    assert.deepEqual(first.dot451, both('dot451', 'temporary'), 'a 4xx verdict on the message: deferred');
    assert.deepEqual(first.dotdrop, both('dotdrop', 'temporary'), 'no verdict after the dot (it may have it): deferred');
    for (const name of ['mail550', 'dot451', 'dotdrop']) assert.deepEqual(atBackup(name), [], `${name}: nothing at the backup`);
  } finally {
    await s.stop();
    for (const p of peers) p.close();
    await backup.close();
  }
});

test('a host that greylists at one address while its other address is down is not suspended: the deferral gives its reply', async () => {
  let greylisted = 0;
  const peer = await startScriptedPeer({ mail: (s) => { greylisted++; s.write('451 4.7.1 greylisted, try again later\r\n'); return 'answered'; } }, '127.0.0.20');
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    // Nothing listens on the second address: refused.
    resolver: fakeResolver({ 'half.test': [{ exchange: 'mx.half.test', priority: 10 }] }, { 'mx.half.test': ['127.0.0.20', '127.0.0.21'] }),
  });
  try {
    const first = await s.send('a@origin.test', ['b@half.test']);
    const e = await s.nextAttempt((x) => x.id === first, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'temporary');
    assert.match(e.outcomes[0]!.reply, /451 4\.7\.1 greylisted/, 'the reply of the host that answered, not the refused connect');
    const second = await s.send('a@origin.test', ['c@half.test']);
    const e2 = await s.nextAttempt((x) => x.id === second, { past: true, timeoutMs: 60_000 });
    assert.doesNotMatch(e2.outcomes[0]!.reply, /suspended/);
    assert.equal(greylisted, 2, 'the host was tried again for the next message');
    assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))));
  } finally {
    await s.stop();
    peer.close();
  }
});

test('at most two sessions per transaction (Postfix smtp_mx_session_limit): a third MX is left for the retry', async () => {
  const third = await startSink();
  let sessions = 0;
  const greylist: PeerHooks = { mail: (s) => { sessions++; s.write('451 4.7.1 greylisted\r\n'); return 'answered'; } };
  const peers = [await startScriptedPeer(greylist, '127.0.0.30', third.port), await startScriptedPeer(greylist, '127.0.0.31', third.port)];
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: third.port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'three.test': [{ exchange: 'a.three.test', priority: 10 }, { exchange: 'b.three.test', priority: 20 }, { exchange: 'c.three.test', priority: 30 }] },
      { 'a.three.test': ['127.0.0.30'], 'b.three.test': ['127.0.0.31'], 'c.three.test': ['127.0.0.1'] }),
  });
  try {
    const id = await s.send('a@origin.test', ['b@three.test']);
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'temporary');
    assert.match(e.outcomes[0]!.reply, /^451 4\.7\.1 greylisted/);
    assert.match(e.outcomes[0]!.remoteMta ?? '', /^b\.three\.test\[/, 'the second session\'s reply');
    assert.equal(sessions, 2);
    assert.equal(third.connections, 0, 'the third MX was not tried');
  } finally {
    await s.stop();
    for (const p of peers) p.close();
    await third.close();
  }
});

// A first MX that greylists (451 before the message) sends its recipients on to the backup MX in the same attempt.
// A backup that cannot take this message as it is (no 8BITMIME for 8-bit content, a SIZE below the message) made
// Postern fail the recipients for good there (5.6.3, 5.3.4: our own judgement of that host, not a reply of it): the
// message bounced, though the first MX had only said "later" and would have taken it at the retry. Before the next-MX
// step it waited for that retry. Such a judgement of a later next hop now leaves the earlier one's temporary reply
// in force (deferred), as does a first MX's failure to connect or a 4xx to EHLO; a refusal the backup itself gives (a
// 550) still bounces.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer, type PeerHooks, type ScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const greylist: PeerHooks = { rcpt: (s) => { s.write('451 4.7.1 greylisted, come back later\r\n'); return 'answered'; } };
const no8bit: PeerHooks = { ehlo: (s) => { s.write('250 backup\r\n'); return 'answered'; } };
/** Each domain's first MX (null: nothing listens there) and backup MX. */
const mxs: Record<string, [PeerHooks | null, PeerHooks]> = {
  'no8bit': [greylist, no8bit],
  'small': [greylist, { ehlo: (s) => { s.write('250-backup\r\n250-8BITMIME\r\n250 SIZE 200\r\n'); return 'answered'; } }],
  'refuses': [greylist, { rcpt: (s) => { s.write('550 5.1.1 no such user here\r\n'); return 'answered'; } }],
  // A first MX that fails the connection itself, for now: the same.
  'ehlo4xx': [{ ehlo: (s) => { s.write('450 4.3.2 busy, try again later\r\n'); return 'answered'; } }, no8bit],
  'down': [null, no8bit],
};

test('a backup MX that cannot take the message as it is does not bounce what the greylisting first MX deferred', async () => {
  const names = Object.keys(mxs);
  const peers: ScriptedPeer[] = [];
  let port = 0;
  for (const [i, name] of names.entries()) {
    const [first, backup] = mxs[name]!;
    const b = await startScriptedPeer(backup, `127.0.0.${51 + 2 * i}`, port);
    port = b.port;
    peers.push(b);
    if (first) peers.push(await startScriptedPeer(first, `127.0.0.${50 + 2 * i}`, port));
  }
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600] },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver(
      Object.fromEntries(names.map((n) => [`${n}.test`, [{ exchange: `mx1.${n}.test`, priority: 10 }, { exchange: `mx2.${n}.test`, priority: 20 }]])),
      Object.fromEntries(names.flatMap((n, i) => [[`mx1.${n}.test`, [`127.0.0.${50 + 2 * i}`]], [`mx2.${n}.test`, [`127.0.0.${51 + 2 * i}`]]])),
    ),
  });
  try {
    const outcome: Record<string, { status: string; reply: string }> = {};
    for (const name of names) {
      const id = await s.send('a@origin.test', [`b@${name}.test`], `Subject: 8-bit\r\n\r\nGrüße aus Köln\r\n${'a line of the message\r\n'.repeat(20)}`);
      const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
      outcome[name] = e.outcomes[0]!;
    }
    for (const name of ['no8bit', 'small']) {
      assert.equal(outcome[name]!.status, 'temporary', `${name}: ${outcome[name]!.reply}`);
      assert.match(outcome[name]!.reply, /451 4\.7\.1 greylisted/, `${name}: the first MX's reply`);
    }
    assert.equal(outcome.ehlo4xx!.status, 'temporary', outcome.ehlo4xx!.reply);
    assert.match(outcome.ehlo4xx!.reply, /450 4\.3\.2 busy/, 'the first MX\'s refusal of the session');
    assert.equal(outcome.down!.status, 'temporary', outcome.down!.reply);
    assert.match(outcome.down!.reply, /mx1\.down\.test/, 'the first MX\'s failure');
    assert.equal(outcome.refuses!.status, 'permanent', 'a refusal by the backup itself still bounces');
    assert.match(outcome.refuses!.reply, /550 5\.1\.1/);
  } finally {
    await s.stop();
    for (const p of peers) p.close();
  }
});

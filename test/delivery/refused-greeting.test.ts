// A next hop that refuses every session at its greeting (421 "too many connections", a host recovering from an
// outage, a 554 block) was connected to once per queued message: after an outage thousands of messages came due,
// and each opened a connection only to be told 421, hammering a host that had just said it had no room. Postfix
// suspends such a destination ("delivery temporarily suspended: host … refused to talk to me"). So does Postern
// now, when no connection of its own to that destination is open: a refusal while one is in session is that
// host's limit on connections, and the mail goes on over the ones it has.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

const MESSAGES = 20;

function server(port: number, delivery: Record<string, unknown> = {}): ReturnType<typeof startDeliveryServer> {
  return startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600], ...delivery },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'full.test': [{ exchange: 'mx.full.test', priority: 10 }] }, { 'mx.full.test': ['127.0.0.1'] }),
  });
}

/** A next hop's greeting with a per-client connection limit of one: it counts a session from its accept to its close. */
function oneSessionAtATime(): { refused: number; greeting(s: net.Socket): 'stop' | void } {
  let open = 0;
  const limit = {
    refused: 0,
    greeting(s: net.Socket): 'stop' | void {
      if (open >= 1) { limit.refused++; s.end('421 4.7.0 peer: one connection at a time\r\n'); return 'stop'; }
      open++;
      s.once('close', () => { open--; });
    },
  };
  return limit;
}

test('a next hop that refuses every session at its greeting is suspended: the rest of its mail is deferred without a connection each', async () => {
  let connections = 0;
  const peer = await startScriptedPeer({ greeting: (s) => { connections++; s.end('421 4.7.0 peer: too many connections, try again later\r\n'); return 'stop'; } });
  const s = await server(peer.port, { concurrency: 4, perDestinationConcurrency: 4 });
  try {
    const ids: string[] = [];
    for (let i = 0; i < MESSAGES; i++) ids.push(await s.send('a@origin.test', [`x${i}@full.test`]));
    const outcomes = [];
    for (const id of ids) outcomes.push((await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!);
    assert.ok(outcomes.every((o) => o.status === 'temporary'));
    assert.ok(connections <= 4, `${connections} connections for ${MESSAGES} messages: at most the ones opened before the first refusal`);
    const suspended = outcomes.filter((o) => /^delivery temporarily suspended: mx\.full\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: too many connections/.test(o.reply));
    assert.equal(suspended.length, MESSAGES - connections, 'the others deferred as suspended, with the refusal');
    assert.ok(s.logs.some((l) => /delivery temporarily suspended for 3600 s: .*refused: 421/.test(String(l.msg))), 'said once at warn');
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a refusal at the greeting while another connection of ours is in session is a limit on connections: not suspended', async () => {
  const limit = oneSessionAtATime();
  let release = false;
  let inData = 0;
  const peer = await startScriptedPeer({
    // One session at a time, as a host with a per-client connection limit.
    greeting: limit.greeting,
    // The session's verdict waits until the test lets it go: the others are refused meanwhile.
    endOfData: (s: net.Socket) => {
      inData++;
      void until('the test to let the verdict go', () => release, { timeoutMs: 60_000 }).then(() => s.write('250 2.0.0 queued\r\n'));
      return 'answered';
    },
  });
  const s = await server(peer.port, { concurrency: 2, perDestinationConcurrency: 2 });
  try {
    const ids = [await s.send('a@origin.test', ['a@full.test'])];
    await until('the first message in session, awaiting its verdict', () => inData >= 1, { timeoutMs: 60_000 });
    ids.push(await s.send('a@origin.test', ['b@full.test']));
    await until('a second connection refused', () => limit.refused >= 1, { timeoutMs: 60_000 });
    // Still in session on the one connection: a third message is refused at its own, and not suspended either.
    ids.push(await s.send('a@origin.test', ['c@full.test']));
    await until('a third connection refused', () => limit.refused >= 2, { timeoutMs: 60_000 });
    release = true;
    const outcomes = await Promise.all(ids.map(async (id) => (await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!));
    assert.deepEqual(outcomes.map((o) => o.status), ['delivered', 'temporary', 'temporary']);
    for (const o of outcomes.slice(1)) assert.match(o.reply, /^mx\.full\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/, 'its own refusal, not a suspension');
    assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))));
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a refusal at the greeting while a connection of ours the pool let go is still open is a limit on connections: not suspended', async () => {
  // One session at a time, as a host with a per-client connection limit; it counts a session until it has answered
  // the QUIT, which this one is slow to do. A pooled connection closed to make room for another identity's (a
  // message with another TLS server name, here) is still in session for it when the new connection comes.
  const limit = oneSessionAtATime();
  const quits: net.Socket[] = [];
  const peer = await startScriptedPeer({
    greeting: limit.greeting,
    quit: (s) => { quits.push(s); return 'stop'; },
  });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { smarthost: { host: '127.0.0.1', port: peer.port } }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 1, perDestinationConcurrency: 1 },
    }),
    scripts: {
      'rcptto.ts': 'export default () => accept();',
      'predelivery.ts': 'export default (ctx: PredeliveryContext) => deliver({ tls: { serverName: `relay.${ctx.destination.domain}` } });',
    },
  });
  try {
    const first = await s.send('a@origin.test', ['a@one.test']);
    assert.equal((await s.nextAttempt((e) => e.id === first, { timeoutMs: 60_000, past: true })).outcomes[0]!.status, 'delivered');
    const second = await s.send('a@origin.test', ['b@two.test']);
    const o = (await s.nextAttempt((e) => e.id === second, { timeoutMs: 60_000, past: true })).outcomes[0]!;
    assert.equal(o.status, 'temporary');
    assert.equal(quits.length, 1, 'the idle connection was let go to make room');
    assert.equal(limit.refused, 1);
    assert.match(o.reply, /^127\.0\.0\.1\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/, 'its own refusal, not a suspension');
    assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the relay is not suspended');
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a refusal at the greeting while another connection of ours is still being set up (EHLO, STARTTLS) is a limit on connections: not suspended', async () => {
  // The next hop counts a session from its accept; ours counts it once EHLO (and STARTTLS) are done. The first
  // connection's EHLO is answered only once the second has been refused.
  const limit = oneSessionAtATime();
  let inEhlo = 0;
  const peer = await startScriptedPeer({
    greeting: limit.greeting,
    ehlo: (s) => {
      inEhlo++;
      void until('the second connection refused', () => limit.refused >= 1, { timeoutMs: 60_000 }).then(() => s.write('250-peer\r\n250 8BITMIME\r\n'));
      return 'answered';
    },
  });
  const s = await server(peer.port, { concurrency: 2, perDestinationConcurrency: 2 });
  try {
    const ids = [await s.send('a@origin.test', ['a@full.test'])];
    await until('the first connection in EHLO', () => inEhlo >= 1, { timeoutMs: 60_000 });
    ids.push(await s.send('a@origin.test', ['b@full.test']));
    const outcomes = await Promise.all(ids.map(async (id) => (await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!));
    assert.deepEqual(outcomes.map((o) => o.status), ['delivered', 'temporary']);
    assert.match(outcomes[1]!.reply, /^mx\.full\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/);
    assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the next hop is not suspended');
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a refusal at the greeting while a connection of ours to the same server under another name is in session is a limit on connections: not suspended', async () => {
  // Shared hosting: two domains' MX hosts are two names of one server, which limits sessions per client address. The
  // pool tells destinations apart by name, so the second domain's refusal while the first's session was open was
  // taken for a host refusing all mail, and its destination suspended for the retry delay.
  const limit = oneSessionAtATime();
  let release = false;
  let inData = 0;
  const peer = await startScriptedPeer({
    greeting: limit.greeting,
    endOfData: (s: net.Socket) => {
      inData++;
      void until('the test to let the verdict go', () => release, { timeoutMs: 60_000 }).then(() => s.write('250 2.0.0 queued\r\n'));
      return 'answered';
    },
  });
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], concurrency: 2, perDestinationConcurrency: 2 },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver(
      { 'one.test': [{ exchange: 'mail.one.test', priority: 10 }], 'two.test': [{ exchange: 'mail.two.test', priority: 10 }] },
      { 'mail.one.test': ['127.0.0.1'], 'mail.two.test': ['127.0.0.1'] },
    ),
  });
  try {
    const ids = [await s.send('a@origin.test', ['a@one.test'])];
    await until('the first message in session, awaiting its verdict', () => inData >= 1, { timeoutMs: 60_000 });
    ids.push(await s.send('a@origin.test', ['b@two.test']));
    await until('a second connection refused', () => limit.refused >= 1, { timeoutMs: 60_000 });
    release = true;
    const outcomes = await Promise.all(ids.map(async (id) => (await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })).outcomes[0]!));
    assert.deepEqual(outcomes.map((o) => o.status), ['delivered', 'temporary']);
    assert.match(outcomes[1]!.reply, /^mail\.two\.test\[127\.0\.0\.1\]:\d+: refused: 421 4\.7\.0 peer: one connection at a time/);
    assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the other name of the server is not suspended');
    // Its next message is tried (the first's connection, idle in the pool, may still be the one the server allows).
    const third = await s.send('a@origin.test', ['c@two.test']);
    const o = (await s.nextAttempt((e) => e.id === third, { timeoutMs: 60_000, past: true })).outcomes[0]!;
    assert.doesNotMatch(o.reply, /suspended/);
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a refusal at the greeting while another connection of ours waits for its greeting (a greet pause) does not suspend the next hop', { timeout: 120_000 }, async () => {
  // Sendmail's greet_pause, or any host slow to greet, with a per-client connection limit: the second connection is
  // refused at once while the first still waits for its 220. Connections not yet greeted did not count, so the healthy
  // relay was suspended for the first retry delay and its other mail deferred without a try.
  let open = 0;
  let refused = 0;
  const paused: Array<() => void> = [];
  const peer = await startScriptedPeer({
    greeting(s) {
      if (open >= 1) { refused++; s.end('421 4.7.0 peer: one connection at a time\r\n'); return 'stop'; }
      open++;
      s.once('close', () => { open--; });
      return new Promise<void>((greet) => paused.push(greet));
    },
  });
  const s = await server(peer.port, { concurrency: 4, perDestinationConcurrency: 2 });
  try {
    const first = await s.send('a@origin.test', ['x1@full.test']);
    const second = await s.send('a@origin.test', ['x2@full.test']);
    await until('one connection waiting for its greeting, the other refused', () => paused.length === 1 && refused === 1, { timeoutMs: 60_000 });
    paused[0]!();
    const attempts = await Promise.all([first, second].map((id) => s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true })));
    assert.equal(attempts.filter((a) => a.removed).length, 1, 'one delivered over the greeted connection');
    assert.ok(!s.logs.some((l) => /delivery temporarily suspended/.test(String(l.msg))), 'the relay is not suspended');
    // Mail to it goes on: not deferred as suspended.
    const third = await s.send('a@origin.test', ['x3@full.test']);
    assert.equal((await s.nextAttempt((e) => e.id === third, { timeoutMs: 60_000, past: true })).removed, true);
  } finally {
    await s.stop();
    peer.close();
  }
});

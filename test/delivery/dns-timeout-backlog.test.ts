// A recipient domain whose DNS does not answer, with mail queued for it: each attempt waited out the resolver's
// timeout (about 15 s) in a queue runner slot, and the next ones looked it up again as soon as that failed (a
// failed lookup was not kept), so a backlog for it kept the runner's slots busy one timeout per couple of
// messages while every other deferred message waited. A lookup that timed out is now kept for 30 s: the rest
// of that domain's mail is deferred at once. Counted: the MX queries the DNS server got for the domain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { startDnsServer } from '../helpers/dns-server.ts';
import { DEFAULT_DNS_TRY_MS, dnsTryMs } from '../../engine/delivery/dns.ts';

const MESSAGES = 6;

// The product's try, 5 s: a lookup's 10 s (two tries) the first message waits out. The test below shortens it.
test('a delivery lookup waits 5 s a try unless POSTERN_DNS_TRY_MS says otherwise', () => {
  const saved = process.env.POSTERN_DNS_TRY_MS;
  try {
    delete process.env.POSTERN_DNS_TRY_MS;
    assert.equal(dnsTryMs(), DEFAULT_DNS_TRY_MS);
    assert.equal(DEFAULT_DNS_TRY_MS, 5000);
    process.env.POSTERN_DNS_TRY_MS = '1000';
    assert.equal(dnsTryMs(), 1000);
  } finally {
    if (saved === undefined) delete process.env.POSTERN_DNS_TRY_MS; else process.env.POSTERN_DNS_TRY_MS = saved;
  }
});

test('mail for a domain whose DNS does not answer: one lookup waits out the timeout, the others are deferred at once', { timeout: 180_000 }, async () => {
  const sink = await startSink();
  const dns = await startDnsServer({
    'live.test': [{ type: 'MX', value: { exchange: 'mx.live.test', priority: 10 } }],
    'mx.live.test': [{ type: 'A', value: '127.0.0.1' }],
  });
  dns.silent.add('silent.test');
  // A try of 1 s, not the product's 5 s (the test above): the lookup that times out is waited out once, in 2 s, not 10 s.
  // Kept for 30 s all the same (TIMEOUT_CACHE_MS), well past the other messages' attempts.
  process.env.POSTERN_DNS_TRY_MS = '1000';
  const s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'none' }, dnsServers: [dns.address],
        concurrency: 1, retrySchedule: [3600],
      },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const ids: string[] = [];
    for (let i = 0; i < MESSAGES; i++) ids.push(await s.send('a@origin.test', [`x${i}@silent.test`]));
    const live = await s.send('a@origin.test', ['z@live.test']);
    for (const id of ids) {
      const e = await s.nextAttempt((x) => x.id === id, { timeoutMs: 150_000, past: true });
      assert.equal(e.outcomes[0]!.status, 'temporary');
      assert.match(e.outcomes[0]!.reply, /Name service error for name=silent\.test type=MX: ETIMEOUT/);
    }
    assert.equal((await s.nextAttempt((x) => x.id === live, { timeoutMs: 60_000, past: true })).removed, true);
    const lookups = s.attempts.filter((e) => ids.includes(e.id)).length;
    const queries = dns.queries.get('MX silent.test') ?? 0;
    // One lookup is a few queries (the resolver's tries); one per pair of messages (2 × concurrency in flight) before.
    assert.ok(queries <= 3, `${queries} MX queries for silent.test for ${lookups} attempts`);
  } finally {
    delete process.env.POSTERN_DNS_TRY_MS;
    await s.stop();
    await dns.stop();
    await sink.close();
  }
});

// Routing by MX: lowest preference first, the next MX when one cannot be reached, A/AAAA without MX,
// NXDOMAIN and null MX bounce, DNS trouble defers; recipients that lead to the same next hop share one
// transaction. DNS is a stand-in here (no queries leave the machine).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from '../helpers/sink.ts';
import { fakeResolver, parseDsn, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, testListener } from '../helpers/config.ts';

let sink: Sink;
let s: DeliveryServer;

before(async () => {
  sink = await startSink();
  s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port: sink.port }, tls: { mode: 'may' }, retrySchedule: [3600], connectTimeoutMs: 3000 },
    }),
    scripts: { 'rcptto.ts': `export default () => accept();` },
    resolver: fakeResolver({
      // 127.0.0.2 is loopback too, but nothing listens there: connection refused.
      'mx.test': [{ exchange: 'backup.mx.test', priority: 20 }, { exchange: 'primary.mx.test', priority: 10 }],
      'also.test': [{ exchange: 'primary.mx.test', priority: 5 }, { exchange: 'backup.mx.test', priority: 50 }],
      'null.test': [{ exchange: '', priority: 0 }],
      'servfail.test': 'servfail',
    }, {
      'primary.mx.test': ['127.0.0.2'],
      'backup.mx.test': ['127.0.0.1'],
      'amx.test': ['127.0.0.1'],
      'origin.test': ['127.0.0.1'],
    }),
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

test('MX order, fallback to the next MX, A without MX, shared transactions, and DNS failures', async () => {
  const id = await s.send('me@origin.test', ['a@mx.test', 'b@also.test', 'c@amx.test', 'd@nx.test', 'e@null.test', 'f@servfail.test']);
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  const by = Object.fromEntries(e.outcomes.map((o) => [o.recipient, o]));
  assert.equal(by['a@mx.test']!.status, 'delivered');
  assert.equal(by['b@also.test']!.status, 'delivered');
  assert.equal(by['a@mx.test']!.remoteMta, `backup.mx.test[127.0.0.1]:${sink.port}`, 'primary refused the connection: backup took it');
  assert.equal(by['c@amx.test']!.status, 'delivered');
  assert.equal(by['d@nx.test']!.status, 'permanent');
  assert.equal(by['d@nx.test']!.enhanced, '5.1.2');
  assert.equal(by['e@null.test']!.status, 'permanent');
  assert.equal(by['e@null.test']!.enhanced, '5.1.10');
  assert.equal(by['f@servfail.test']!.status, 'temporary');
  const mine = sink.messages.filter((m) => m.from === 'me@origin.test');
  assert.deepEqual(mine.map((m) => m.to).sort(), [['a@mx.test', 'b@also.test'], ['c@amx.test']],
    'mx.test and also.test share MX hosts: one transaction');
  assert.equal(e.removed, false, 'servfail.test is still pending');
  // Recipients no transaction was tried for have their delivery line too, with why.
  const unsent = s.logs.filter((l) => l.id === id && l.relay === 'none').map((l) => [l.to, l.status, l.reason]);
  assert.deepEqual(unsent.sort(), [
    [['d@nx.test'], 'bounced', 'delivery.route: no usable MX'],
    [['e@null.test'], 'bounced', 'delivery.route: no usable MX'],
    [['f@servfail.test'], 'deferred', 'delivery.route: no usable MX'],
  ]);
  await until('the bounce at the sink', () => sink.messages.some((m) => m.from === ''));
  const dsn = parseDsn(sink.messages.find((m) => m.from === '')!.data);
  assert.deepEqual(dsn.recipients.map((r) => [r['final-recipient'], r.status]), [['rfc822; d@nx.test', '5.1.2'], ['rfc822; e@null.test', '5.1.10']]);
  assert.match(dsn.recipients[0]!['diagnostic-code']!, /^X-Postern; Host or domain name not found/);
});

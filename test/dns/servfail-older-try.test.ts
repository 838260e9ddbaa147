/**
 * A lookup asked again (within-budget.ts: each try unanswered for `tryMs` is asked again, the earlier one still
 * open) waits for every open try before it takes a failure. A recursive resolver whose first recursion failed
 * upstream answers that try SERVFAIL while its answer to the retransmission is on its way: the SERVFAIL, read
 * first, failed the lookup (mail deferred for an hour) though the answer came a moment later.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDnsServer } from '../helpers/dns-server.ts';
import { createResolver } from '../../engine/delivery/dns.ts';

test('an older try\'s SERVFAIL while a newer try is open: the newer try\'s answer is taken', async () => {
  const dns = await startDnsServer({ 'retried.test': [{ type: 'MX', value: { exchange: 'mx.retried.test', priority: 10 } }] });
  dns.servfailFirstTry.add('retried.test');
  try {
    const resolver = createResolver({ servers: [dns.address], hostLookup: 'dns', timeoutMs: 500 });
    assert.deepEqual(await resolver.mx('retried.test'), [{ exchange: 'mx.retried.test', priority: 10 }]);
    assert.equal(dns.queries.get('MX retried.test'), 2);
  } finally {
    await dns.stop();
  }
});

test('every try SERVFAIL: the lookup is SERVFAIL once the last open try has failed, not a timeout', async () => {
  const dns = await startDnsServer({ 'failing.test': [] });
  dns.servfail.add('failing.test');
  dns.servfailFirstTry.add('failing.test');
  try {
    const resolver = createResolver({ servers: [dns.address], hostLookup: 'dns', timeoutMs: 500 });
    await assert.rejects(resolver.mx('failing.test'), (err: Error) => /SERVFAIL/i.test(err.message) && !/tim/i.test(err.message));
  } finally {
    await dns.stop();
  }
});

// Delivery is off without a `delivery` section: such a configuration only spools. Adding the section (enabled
// by default once present) is a reload like any other, and the runner then delivers what waited in the spool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

test('off by default; enabling it by reload delivers what the spool holds', async () => {
  const sink = await startSink();
  const s = await startDeliveryServer({
    config: configYaml({ localDomains: ['dest.test'], listeners: [testListener('in')] }),
  });
  try {
    const id = await s.send('me@origin.test', ['r@dest.test']);
    // The runner is told of a message when it is committed, before the 250: had it taken it, it would
    // hold it now (queued or in an attempt).
    assert.deepEqual([s.queue!.queuedCount, s.queue!.activeCount], [0, 0], 'the runner did not take it');
    assert.deepEqual(await s.runtime.spool.list(), [id], 'kept in the spool');
    assert.equal(s.attempts.length, 0);
    assert.ok(s.logs.some((l) => String(l.msg).startsWith('delivery disabled')));

    const reloaded = new Promise<{ ok: boolean; errors: string[] }>((resolve) => { const off = s.reloader.onReload((o) => { off(); resolve(o); }); });
    const file = join(s.dir, 'postern.yaml');
    await writeFile(file, `${await readFile(file, 'utf8')}delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${sink.port} } }
`);
    assert.equal((await reloaded).ok, true);
    await sink.waitFor(1); // the swap makes the runner scan at once
    assert.deepEqual(sink.messages[0]!.to, ['r@dest.test']);
    await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
    assert.deepEqual(await s.runtime.spool.list(), []);
  } finally {
    await s.stop();
    await sink.close();
  }
});

// The queue runner removes a due request (`postern queue retry|release`) whose attempt it made by taking the file
// aside (a rename to a temporary name) and looking at it there: a request written over it during the attempt is put
// back. A queue process killed between the two left the request under the temporary name, which the next start's
// scan removed as a leftover write: a `postern queue retry` made during the attempt was lost, and the message waited
// for its retry time (an hour here, hours by default) for the attempt asked for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';

test('a due request left aside by a queue process killed while removing it is put back at the next start, and gets its attempt', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-retry-aside-'));
  const dataDir = join(dir, 'data');
  const peer = await startScriptedPeer({});
  let s: DeliveryServer | null = null;
  try {
    const spool = new Spool(join(dataDir, 'spool'));
    await spool.init();
    const [id] = await spoolMessages(spool, ['someone@next.test'], { deferredUntil: new Date(Date.now() + 3600_000) });
    // What the killed process left: the request (one written during the attempt: not the one taken) under the name
    // clearDueRequest gave it, its pid that of a process gone.
    const gone = spawnSync(process.execPath, ['-e', '']).pid;
    assert.ok(gone > 0);
    await writeFile(join(spool.queueDir, `.${id}.due.${gone}.0123abcd.tmp`), `${new Date().toISOString()}\n`);
    spool.close();

    s = await startDeliveryServer({
      dataDir,
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port: peer.port }, tls: { mode: 'none' }, retrySchedule: [3600], scanIntervalMs: 200 },
      }),
      resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
    });
    await s.scans(3, 60_000);
    const server = s;
    assert.ok(server.attempts.some((e) => e.id === id) || (await server.spools.readDueRequest(id!)) !== null,
      'the request is back (or its attempt made), not removed as a temporary');
    const attempt = await server.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(attempt.removed, true, 'the requested attempt made now, not an hour later');
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

// A `postern queue retry` made while an attempt of the message is under way asks for an attempt after it (the one
// under way may have connected before the administrator fixed what made it fail). The request file now stays until
// its attempt is recorded (retry-request-kept.test.ts); a second request written over it during that attempt was
// skipped by the scans (taken already) and removed with the first one's attempt: the message then waited for its
// recorded retry time, an hour here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../../engine/spool/spool.ts';
import { retryMessages } from '../../engine/queue/admin.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { spoolMessages } from '../helpers/spooled-queue.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';

test('a retry request made during an attempt of the message gets an attempt of its own after it', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-retry-during-'));
  const dataDir = join(dir, 'data');
  // While `holding`, the next hop does not answer RCPT: the attempt stays under way.
  let holding = true;
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ rcpt: (s) => { if (!holding) return; held.push(s); return 'stop'; } });
  let s: DeliveryServer | null = null;
  try {
    let id: string;
    ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port));

    await retryMessages(s.spools, [id]);
    await until('the requested attempt is under way', () => held.length === 1, { timeoutMs: 60_000 });
    await retryMessages(s.spools, [id]); // the next hop has been fixed meanwhile, say
    await s.scans(2, 60_000); // the second request seen while the first one's attempt is under way

    holding = false;
    held[0]!.write('451 4.3.0 try again later\r\n');
    const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(first.removed, false, 'the attempt under way is deferred');
    const second = await s.nextAttempt((e) => e.id === id && e !== first, { timeoutMs: 60_000, past: true });
    assert.equal(second.removed, true, 'the second request made an attempt of its own, not one an hour later');
    await until('the request removed with its attempt made', async () => (await s!.spools.readDueRequest(id)) === null);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a scan while the request of a recorded attempt is being removed makes no second attempt', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-retry-clearing-'));
  const dataDir = join(dir, 'data');
  const peer = await startScriptedPeer({ rcpt: (s) => { s.write('451 4.3.0 try again later\r\n'); return 'answered'; } });
  let s: DeliveryServer | null = null;
  try {
    let id: string;
    ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port));
    // A slow disk: the request's removal ends only after a whole scan has run meanwhile.
    const server = s;
    const clear = server.spools.clearDueRequest.bind(server.spools);
    let cleared = false;
    server.spools.clearDueRequest = async (...args) => {
      await server.scans(1, 60_000);
      await clear(...args);
      cleared = true;
    };

    await retryMessages(server.spools, [id]);
    const first = await server.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(first.removed, false);
    await until('the request removed', () => cleared, { timeoutMs: 60_000 });
    await server.scans(2, 60_000);
    assert.equal((await server.spools.readDueRequest(id)), null, 'the request is gone');
    assert.deepEqual(server.attempts.filter((e) => e.id === id).map((e) => e.attempt), [first.attempt], 'one attempt for one request');
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a retry request made during a scheduled attempt (no request of its own) gets an attempt after it, not the retry time', { timeout: 120_000 }, async () => {
  // The attempt under way was due by the schedule: the request taken during it is for the one after it ('after'). Its
  // record scheduled the message an hour on, and that schedule stood: the request waited an hour for its attempt.
  const dir = await mkdtemp(join(tmpdir(), 'postern-retry-during-scheduled-'));
  const dataDir = join(dir, 'data');
  let holding = true;
  const held: net.Socket[] = [];
  const peer = await startScriptedPeer({ rcpt: (s) => { if (!holding) return; held.push(s); return 'stop'; } });
  let s: DeliveryServer | null = null;
  try {
    let id: string;
    ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port, null));

    await until('the scheduled attempt is under way', () => held.length === 1, { timeoutMs: 60_000 });
    await retryMessages(s.spools, [id]); // the next hop has been fixed meanwhile, say
    await s.scans(2, 60_000); // the request seen while the attempt is under way

    holding = false;
    held[0]!.write('451 4.3.0 try again later\r\n');
    const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(first.removed, false, 'the attempt under way is deferred');
    const second = await s.nextAttempt((e) => e.id === id && e !== first, { timeoutMs: 60_000, past: true });
    assert.equal(second.removed, true, 'the request made an attempt of its own, not one an hour later');
    await until('the request removed with its attempt made', async () => (await s!.spools.readDueRequest(id)) === null);
  } finally {
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a retry request written while the runner removes the one whose attempt it made stands, and gets its attempt', { timeout: 120_000 }, async () => {
  // The runner read the request file, found the one it took, and then unlinked the path: a `postern queue retry` run in
  // between (another process: any moment) was removed with it, and the message waited for its retry time (an hour here).
  const dir = await mkdtemp(join(tmpdir(), 'postern-retry-clearing-race-'));
  const dataDir = join(dir, 'data');
  let accept = false;
  const peer = await startScriptedPeer({ rcpt: (s) => { if (accept) return; s.write('451 4.3.0 try again later\r\n'); return 'answered'; } });
  let s: DeliveryServer | null = null;
  // The queue runner's removal of the request file, whatever its name then, waits for a `postern queue retry` run now.
  const fsp = createRequire(import.meta.url)('node:fs/promises') as typeof import('node:fs/promises');
  const realUnlink = fsp.unlink;
  let interpose: ((path: string) => Promise<void>) | null = null;
  fsp.unlink = (async (path: Parameters<typeof realUnlink>[0]) => {
    const hook = interpose;
    if (hook) await hook(String(path));
    return realUnlink(path);
  }) as typeof realUnlink;
  syncBuiltinESMExports();
  try {
    let id: string;
    ({ s, id } = await serverWithDeferredMessage(dataDir, peer.port));
    const config = join(s.dir, 'postern.yaml');
    let retried = false;
    s.queue!.onAttempt((e) => {
      if (e.id !== id || interpose) return;
      accept = true; // the next hop fixed meanwhile
      interpose = async (path) => {
        if (retried || !path.includes(`${id}.due`)) return;
        retried = true;
        const r = await runCli(['queue', 'retry', id, '-c', config]);
        assert.equal(r.code, 0, r.stderr);
      };
    });

    await retryMessages(s.spools, [id]);
    const first = await s.nextAttempt((e) => e.id === id, { timeoutMs: 60_000, past: true });
    assert.equal(first.removed, false, 'the requested attempt is deferred');
    await until('the second retry run as the first request is removed', () => retried, { timeoutMs: 60_000 });
    const second = await s.nextAttempt((e) => e.id === id && e !== first, { timeoutMs: 60_000, past: true });
    assert.equal(second.removed, true, 'the second request made an attempt of its own, not one an hour later');
  } finally {
    fsp.unlink = realUnlink;
    syncBuiltinESMExports();
    await s?.stop();
    peer.close();
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * A server delivering to `port`, and a message in its spool whose next attempt is an hour away (retries hourly);
 * `deferredUntil` null: never attempted, due at once.
 */
async function serverWithDeferredMessage(dataDir: string, port: number, deferredUntil: Date | null = new Date(Date.now() + 3600_000)): Promise<{ s: DeliveryServer; id: string }> {
  const spool = new Spool(join(dataDir, 'spool'));
  await spool.init();
  const [id] = await spoolMessages(spool, ['someone@next.test'], deferredUntil ? { deferredUntil } : {});
  spool.close();
  const s = await startDeliveryServer({
    dataDir,
    config: configYaml({
      listeners: [testListener('in')],
      delivery: { enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600], scanIntervalMs: 200 },
    }),
    resolver: fakeResolver({ 'next.test': [{ exchange: 'mx.next.test', priority: 10 }] }, { 'mx.next.test': ['127.0.0.1'] }),
  });
  return { s, id: id! };
}

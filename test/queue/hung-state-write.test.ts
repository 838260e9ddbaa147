/**
 * The queue process's delivery state files on a disk that stops answering (a lost SAN or NFS path: the fdatasync of a
 * state's temporary file never returns). The attempt that recorded a deferral waited for it for as long as the disk
 * hung, and said nothing: no error line, /readyz 200. Each further deferral held one more thread of libuv's pool,
 * until none was left and the queue process stopped delivering anything (every file read and DNS lookup waits for a
 * thread), still unseen. Now a state write is bounded by spool.syncDeadlineMs, as a message's sync is: past it, the
 * outcome is kept in memory (the record's error line names the file), the next state writes are refused at once
 * without taking a thread, /readyz and the gauge say the queue process cannot confirm writes, and once the disk
 * answers /readyz is 200 again and each state is written (at the message's next attempt). The fault is injected at the C library (test/helpers/disk-faults.c, fdatasync-hang, preloaded);
 * the server, its clients and the next hop are real.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { greeted, startCluster, ONE_WORKER, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';

/** The server's own threads of libuv's pool (engine/app/threadpool.ts): more deferrals than that were hung before. */
const POOL_THREADS = 16;

async function readyz(port: number): Promise<{ status: number; text: string }> {
  const r = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(90_000) });
  return { status: r.status, text: await r.text() };
}

/** One message per recipient, on one connection; their queue ids. */
async function send(c: ClusterProcess, recipients: string[]): Promise<string[]> {
  const client = await greeted(c);
  const ids: string[] = [];
  for (const to of recipients) {
    assert.equal((await client.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await client.command(`RCPT TO:<${to}>`)).code, 250);
    assert.equal((await client.command('DATA')).code, 354);
    client.write(`Subject: to ${to}\r\n\r\nx\r\n.`);
    const r = await client.read(60_000);
    assert.equal(r.code, 250, r.text);
    ids.push(/queued as (\S+)/.exec(r.text)![1]!);
  }
  await client.quit();
  return ids;
}

const notRecorded = (c: ClusterProcess, id: string): boolean =>
  c.logs.some((l) => l.id === id && l.level === 50 && /cannot record the outcome of a delivery attempt/.test(String(l.msg)));

test('a delivery state write that hangs: logged naming the file, /readyz and the gauge say so, no more pool threads taken, delivery goes on; the disk back, every state written', { timeout: 180_000 }, async (t) => {
  const faults = diskFaults();
  const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address.startsWith('later') ? { code: 451, text: '4.2.0 Try again later' } : null) });
  const c = await startCluster({ env: faults.env, config: `${ONE_WORKER}spool: { syncDeadlineMs: 5000 }\nadmin: { listen: "127.0.0.1:{PORT:admin}" }\n${deliveryToSink(sink.port, { retrySchedule: [2] })}` });
  const admin = c.port('admin');
  try {
    faults.armFor('fdatasync-hang', '.tmp'); // the temporary file a state is written through (spool.ts #writeBeside)
    const [first] = await send(c, ['later0@example.test']);
    await c.waitFor('the first state write hangs', () => faults.hungCalls('fdatasync-hang') >= 1);
    const line = await c.waitFor('the record\'s failure logged at error', () => c.logs.find((l) => l.id === first && l.level === 50 && /cannot record the outcome/.test(String(l.msg))), 30_000);
    assert.match(JSON.stringify(line), new RegExp(`worker-0/queue/${first}\\.state.*has not confirmed|has not confirmed.*worker-0/queue/${first}\\.state`), 'the error names the state file');
    // Told by the queue process's next heartbeat.
    const hung = await c.waitFor('/readyz 503', async () => { const r = await readyz(admin); return r.status === 503 && r; }, 30_000);
    assert.match(JSON.parse(hung.text).checks.spool.detail, /cannot confirm writes.*the queue process.*outcomes of deliveries wait in memory/);
    const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`, { signal: AbortSignal.timeout(90_000) })).text();
    assert.match(metrics, /^postern_spool_writes_unconfirmed(\{[^}]*\})? 1$/m);

    // More deferrals than the pool has threads: each refused at once, none waiting on the disk.
    const later = await send(c, Array.from({ length: POOL_THREADS }, (_, i) => `later${i + 1}@example.test`));
    await c.waitFor('every further deferral\'s record refused', () => later.every((id) => notRecorded(c, id)), 60_000);
    t.diagnostic(`state writes waiting on the disk: ${faults.hungCalls('fdatasync-hang')}`);
    assert.equal(faults.hungCalls('fdatasync-hang'), 1, 'one write waits on the disk, not one per deferral');
    const [now] = await send(c, ['now@example.test']);
    await c.waitFor('a message the next hop accepts is still delivered', () => sink.messages.some((m) => m.data.toString().includes('Subject: to now@')), 60_000);
    assert.ok(now);

    faults.disarm('fdatasync-hang');
    await c.waitFor('ready again once the disk answers', async () => (await readyz(admin)).status === 200);
    const stateOf = (id: string): string => join(c.dataDir, 'spool', 'worker-0', 'queue', `${id}.state`);
    await c.waitFor('every deferral\'s state written', () => [first!, ...later].every((id) => existsSync(stateOf(id))), 60_000);
    assert.equal(sink.messages.filter((m) => m.data.toString().includes('Subject: to now@')).length, 1, 'delivered once');
  } finally {
    faults.disarm('fdatasync-hang');
    await c.stop();
    await sink.close();
  }
});

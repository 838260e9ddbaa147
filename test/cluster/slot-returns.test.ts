// Per-IP slots given back by a worker reach the supervisor with the worker's next message (a hand-over, a
// slot request, the heartbeat), not each in a message of its own. Until then they still count in the
// supervisor (never less than what is open), and the worker's own decisions subtract them, so one worker
// decides exactly as if each had been told at once. The worker's and the supervisor's sides, wired together.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { CounterHost, WorkerCounters } from '../../engine/cluster/shared-counters.ts';

const KEY = 'in 192.0.2.7';

/** A worker's counters talking to a supervisor's CounterHost; `sent` counts the worker's messages. */
function wired(): { host: CounterHost; worker: WorkerCounters; sent: Array<{ t?: string }> } {
  const host = new CounterHost(60_000);
  const sent: Array<{ t?: string }> = [];
  let worker: WorkerCounters;
  const channel = {
    send(m: object): void {
      sent.push(m);
      host.handle(0, m as Parameters<CounterHost['handle']>[1], (answer) => worker.handle(answer as Parameters<WorkerCounters['handle']>[0]), () => undefined);
    },
  };
  worker = new WorkerCounters(channel, 60_000);
  return { host, worker, sent };
}

/** The supervisor hands a connection over as supervisor.ts does: slot taken, counts sent with the socket. */
function handOver(host: CounterHost, worker: WorkerCounters, port: number): EventEmitter {
  const socket = new EventEmitter();
  const open = host.take(0, KEY);
  worker.handedOver(KEY, port, open, '192.0.2.7', [], socket, host.total('in'), host.seen(0));
  return socket;
}

/** What the worker's listener does with a handed-over connection (postern-server.ts): its counts, then its slot claimed. */
function claim(worker: WorkerCounters, port: number): { open: number | undefined; total: number | undefined } {
  const total = worker.handedTotal(KEY, port);
  return { total, open: worker.handedOpen(KEY, port) };
}

test('slots given back are told with the next hand-over, in one message; the worker decides on its own counts meanwhile', () => {
  const { host, worker, sent } = wired();
  handOver(host, worker, 1001);
  assert.deepEqual(claim(worker, 1001), { open: 1, total: 1 });
  handOver(host, worker, 1002);
  assert.deepEqual(claim(worker, 1002), { open: 2, total: 2 });
  worker.releaseHanded(KEY); // both sessions end
  worker.releaseHanded(KEY);
  assert.equal(sent.length, 0, 'no message per closed connection');
  assert.equal(host.open(KEY), 2, 'the supervisor still counts them: never less than what is open');
  // A new connection from the same address: the supervisor's count says 3, yet both others are closed, and
  // this worker knows it: it decides on 1, as if each return had been told at once.
  handOver(host, worker, 1003);
  assert.deepEqual(sent, [{ t: 'conn-', keys: [KEY, KEY], s: 1 }], 'both returns in one message, with the hand-over');
  assert.equal(host.open(KEY), 1);
  assert.deepEqual(claim(worker, 1003), { open: 1, total: 1 }, 'its own returns subtracted from the per-IP count and from the listener total');
  // A socket that closes before its listener took it gives its slot back the same way.
  const gone = handOver(host, worker, 1004);
  gone.emit('close');
  assert.equal(host.open(KEY), 2);
  worker.flush();
  assert.equal(host.open(KEY), 1);
});

test('a slot request and the heartbeat tell the returns first', async () => {
  const { host, worker, sent } = wired();
  handOver(host, worker, 2001).emit('close');
  assert.equal(host.open(KEY), 1);
  // A PROXY protocol listener's slot, by round trip: the supervisor decides on counts without the closed one.
  const admitted = await worker.acquire(KEY, '192.0.2.7', 1);
  assert.equal(admitted.ok, true);
  assert.deepEqual(sent.map((m) => m.t), ['conn-', 'conn+']);
  worker.release(KEY);
  assert.equal(host.open(KEY), 1, 'not told yet');
  worker.flush(); // what the heartbeat does
  assert.equal(host.open(KEY), 0);
  assert.equal(host.total('in'), 0);
  worker.flush();
  assert.equal(sent.length, 3, 'nothing to tell: no message');
});

test('returns told but not yet read by the supervisor are subtracted from the counts handed over meanwhile', () => {
  // The worker's 'conn-' is on its way (written, not read) when the supervisor counts the next connection:
  // its counts still hold those slots, and the hand-over says which returns it had read.
  const host = new CounterHost(60_000);
  const inFlight: object[] = [];
  const worker = new WorkerCounters({ send: (m) => inFlight.push(m) }, 60_000);
  const deliver = (): void => {
    for (const m of inFlight.splice(0)) host.handle(0, m as Parameters<CounterHost['handle']>[1], () => undefined, () => undefined);
  };
  handOver(host, worker, 3001);
  assert.deepEqual(claim(worker, 3001), { open: 1, total: 1 });
  worker.releaseHanded(KEY); // the client leaves…
  worker.flush(); // …its return is told (the heartbeat), not yet read
  handOver(host, worker, 3002); // …and it reconnects at once: the supervisor still counts the old slot
  assert.equal(host.open(KEY), 2);
  assert.deepEqual(claim(worker, 3002), { open: 1, total: 1 }, 'the return in flight is subtracted');
  deliver();
  assert.equal(host.open(KEY), 1);
  // Once the supervisor has read it, a later hand-over no longer subtracts it.
  worker.releaseHanded(KEY);
  worker.flush();
  deliver();
  handOver(host, worker, 3003);
  assert.deepEqual(claim(worker, 3003), { open: 1, total: 1 }, 'read returns are not subtracted twice');
  const other = handOver(host, worker, 3004);
  assert.deepEqual(claim(worker, 3004), { open: 2, total: 2 }, 'a second open connection still counts');
  other.emit('close');
});

test('a connection a worker accepted itself takes its slot whatever the count (over the limit it reads its 421); the worker holding the counting lease counts alone, without a message', async () => {
  const { host, worker, sent } = wired();
  assert.deepEqual(await worker.take(KEY, '192.0.2.7'), { open: 1, total: 1 });
  assert.deepEqual(await worker.take(KEY, '192.0.2.7'), { open: 2, total: 2 }, 'counted over the limit too: the caller decides');
  assert.equal(host.open(KEY), 2);
  worker.release(KEY);
  assert.deepEqual(await worker.take(KEY, '192.0.2.7'), { open: 2, total: 2 }, 'the slot given back was told before the next take');
  assert.ok(sent.every((m) => m.t === 'conn+' || m.t === 'conn-'));

  const messages: object[] = [];
  const sole = new WorkerCounters({ send: (m) => messages.push(m) }, 60_000);
  sole.handle({ t: 'lease', counts: [], seen: 0 }); // the supervisor's grant: no slot counted anywhere yet
  assert.deepEqual(await sole.take(KEY, '192.0.2.7'), { open: 1, total: 1 });
  assert.deepEqual(await sole.take(KEY, '192.0.2.7'), { open: 2, total: 2 });
  assert.deepEqual(await sole.acquire(KEY, '192.0.2.7', 2), { ok: false }, 'a PROXY listener\'s slot, over its limit');
  sole.release(KEY);
  assert.deepEqual(await sole.acquire(KEY, '192.0.2.7', 2), { ok: true, total: 2 });
  sole.release(KEY);
  sole.release(KEY);
  sole.flush();
  assert.deepEqual(await sole.take(KEY, '192.0.2.7'), { open: 1, total: 1 }, 'every slot back');
  assert.deepEqual(messages, [], 'nothing sent to the supervisor');
});

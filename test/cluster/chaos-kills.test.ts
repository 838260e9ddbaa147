// Faults at random-looking moments under load: workers and the queue process are killed (SIGKILL) or frozen
// (SIGSTOP, then SIGCONT once the others have moved on), one after another, while clients keep sending and the
// queue delivers to a real next hop. Every message that got its 250 must reach the next hop at least once;
// copies beyond the first can only come from a queue process that died between a next hop's 250 and its
// done mark, and are counted (the log says such a death may send again what was in flight).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { startCluster, load, spooled, TWO_WORKERS, ROUND_ROBIN, deliveryToSink } from '../helpers/cluster.ts';

const ROUNDS: Array<{ role: 'worker' | 'queue'; index: number; signal: 'SIGKILL' | 'SIGSTOP' }> = [
  { role: 'worker', index: 0, signal: 'SIGKILL' },
  { role: 'queue', index: 0, signal: 'SIGKILL' },
  { role: 'worker', index: 1, signal: 'SIGSTOP' },
  { role: 'queue', index: 0, signal: 'SIGSTOP' },
  { role: 'worker', index: 1, signal: 'SIGKILL' },
  { role: 'queue', index: 0, signal: 'SIGKILL' },
  { role: 'worker', index: 0, signal: 'SIGSTOP' },
  { role: 'worker', index: 0, signal: 'SIGKILL' },
];

test('workers and the queue process killed or frozen under load, one after another: nothing acknowledged is lost', { timeout: 300_000 }, async () => {
  const sink = await startSink({ dataDelayMs: 2 }); // a backlog, so kills land in the middle of deliveries
  const c = await startCluster({
    config: `${TWO_WORKERS}${ROUND_ROBIN}${deliveryToSink(sink.port, { retrySchedule: [0.2] })}`,
  });
  // Two clients: the faults still land under load; four sent more only while the server waited out each fault.
  const clients = load(c, 2);
  try {
    for (const [n, round] of ROUNDS.entries()) {
      const goal = clients.acked.length + 25;
      await c.waitFor(`round ${n}: 25 more messages acknowledged`, () => clients.acked.length >= goal, 120_000);
      const victim = await c.waitFor(`round ${n}: ${round.role} ${round.index} ready`, async () =>
        (await c.cluster()).processes.find((p) => p.role === round.role && p.index === round.index && p.ready && p.pid)?.pid, 120_000);
      process.kill(victim, round.signal);
      if (round.signal === 'SIGSTOP') {
        // Frozen until the server has moved on without it: replaced (the supervisor's hang limit) or, for the
        // queue, at least until more mail was accepted meanwhile.
        await c.waitFor(`round ${n}: ${round.role} ${round.index} replaced`, async () =>
          (await c.cluster()).processes.some((p) => p.role === round.role && p.index === round.index && p.pid !== victim), 120_000);
        try { process.kill(victim, 'SIGCONT'); } catch { /* killed as hung meanwhile */ }
      }
    }
    await clients.stop();
    const acked = new Set(clients.acked);
    const copies = new Map<string, number>();
    let counted = 0;
    const idOf = (data: Buffer): string => /\(Postern\) with E?SMTP id ([0-9a-z]+)/.exec(data.toString('latin1'))?.[1] ?? '';
    await c.waitFor('every acknowledged message at the next hop', () => {
      for (; counted < sink.messages.length; counted++) {
        const id = idOf(sink.messages[counted]!.data);
        copies.set(id, (copies.get(id) ?? 0) + 1);
      }
      return [...acked].every((id) => copies.has(id));
    }, 120_000).catch(() => undefined);
    const missing = [...acked].filter((id) => !copies.has(id));
    const duplicated = [...copies.values()].filter((k) => k > 1).length;
    process.stderr.write(`# ${acked.size} acknowledged, ${sink.messages.length} deliveries of ${copies.size} messages, ${duplicated} delivered more than once, ${missing.length} missing; ${clients.failures} client sessions cut\n`);
    assert.deepEqual(missing, [], 'every acknowledged message reaches the next hop');
    assert.ok(c.logs.some((l) => /^queue process died \(signal SIGKILL\): replacing it; a delivery it had under way may be made again/.test(String(l.msg))), 'a possible second copy is logged');
    await c.waitFor('the spools drained', async () => (await spooled(c)).size === 0, 60_000);
    const restarts = (await c.cluster()).processes.reduce((sum, p) => sum + p.restarts, 0);
    assert.ok(restarts >= ROUNDS.length, `${restarts} replacements for ${ROUNDS.length} faults`);
  } finally {
    await clients.stop();
    await c.stop();
    await sink.close();
  }
});

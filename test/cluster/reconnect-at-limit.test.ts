// A client at its per-IP limit that reconnects as soon as its last connection closed must find its slot
// free under `postern serve` too, however the worker's returned slots and the supervisor's hand-overs cross
// on the IPC channel (shared-counters.ts: each hand-over names the last return the supervisor had read).
// Many clients, each at its limit of one, reconnect in a loop; every refusal is counted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, workerPid } from '../helpers/cluster.ts';

const CLIENTS = 8;
const ROUNDS = 60;

test('an immediate reconnect at maxConnectionsPerIp is never refused (one worker, many clients)', async () => {
  const c = await startCluster({
    config: `
workers: 1
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1 }
`,
  });
  try {
    await workerPid(c, 0);
    const refused: string[] = [];
    let greeted = 0;
    // Each client (its own address) opens, is greeted, quits, waits until the server closed, then reconnects.
    const client = async (n: number): Promise<void> => {
      for (let i = 0; i < ROUNDS; i++) {
        const s = await SmtpTestClient.connect(c.port('in'), { localAddress: `127.0.1.${n + 1}` });
        const r = await s.read(30_000);
        if (r.code === 220) {
          greeted++;
          s.write('QUIT');
          await s.read(30_000);
        } else {
          refused.push(`127.0.1.${n + 1} round ${i}: ${r.text}`);
        }
        assert.ok(await s.waitClosed(30_000), 'the server closes after QUIT or its refusal');
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, (_, n) => client(n)));
    assert.deepEqual(refused, [], `refused ${refused.length} of ${CLIENTS * ROUNDS} reconnects`);
    assert.equal(greeted, CLIENTS * ROUNDS);
  } finally {
    await c.stop();
  }
});

// A state file that is valid JSON but not a delivery state (written by hand, a tool, or a disk that kept
// another file's bytes) was taken as it was: `null` read as "no state yet", so every recipient was sent to
// again, the ones already delivered included; `recipients` of another type threw inside each attempt, which
// was retried at every retry step for ever. Such a state is now unreadable like one that is not JSON: the
// message is held back and logged ("unreadable delivery state"), until `postern queue retry` restarts it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';

for (const [name, text] of [['null', 'null'], ['recipients of another type', '{"attempts":1,"nextAttemptAt":"2026-01-01T00:00:00.000Z","errors":[],"recipients":"x"}'], ['an array', '[]']] as const) {
  test(`a state file holding ${name}: held back as unreadable, the delivered recipient not sent to again`, async () => {
    const sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && address.startsWith('later@') ? { code: 451, text: '4.2.0 later' } : null) });
    const s = await startDeliveryServer({
      config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], scanIntervalMs: 200 }) }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
    });
    try {
      const id = await s.send('a@origin.test', ['ok@dest.test', 'later@dest.test']);
      const first = await s.nextAttempt((e) => e.id === id, { past: true });
      assert.deepEqual(first.outcomes.map((o) => o.status).sort(), ['delivered', 'temporary']);
      const spool = s.spools.home;
      await writeFile(spool.statePath(id), text);
      await spool.requestRescan(); // seen at the next scan: every 200 ms here, not the default 5 s
      await until('the state read again', () => s.logs.some((l) => l.id === id && /unreadable delivery state/.test(String(l.msg))) || s.attempts.filter((e) => e.id === id).length > 1
        || s.logs.some((l) => l.id === id && /delivery attempt failed/.test(String(l.msg))), { timeoutMs: 30_000 });
      assert.equal(sink.messages.filter((m) => m.to.includes('ok@dest.test')).length, 1, 'ok@ not sent to again');
      assert.ok(s.logs.some((l) => l.id === id && /unreadable delivery state/.test(String(l.msg))), 'logged as unreadable');
      assert.equal(s.attempts.filter((e) => e.id === id).length, 1, 'no further attempt');
    } finally {
      await s.stop();
      await sink.close();
    }
  });
}

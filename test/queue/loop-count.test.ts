// The mail-loop check counts Received fields in the header section. It looked for the section's end as CRLF
// CRLF only: in a message whose lines end in a bare LF (as some clients send it, and as it is spooled), it
// counted the body's lines too, and a body quoting more than 50 "Received:" lines (a forwarded bounce, a log)
// bounced as a mail loop (5.4.6). A real loop is still caught whatever the line ends: a client's message with 50
// Received fields in its header at the door (554 5.4.6 at the end of DATA, test/smtp/hop-limit.test.ts), and one
// that passes it with fewer but leaves with more than 50 (here a data script adds two) by the queue.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

test('bare LF line ends: Received lines in the body are no loop; a loop in the header still is (at the door, or as it leaves)', async () => {
  const sink = await startSink();
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }) }),
    scripts: {
      'rcptto.ts': 'export default () => accept();',
      'data.ts': `export default (ctx) => ctx.data.headers.some(([n, v]) => n === 'Subject' && v === 'looping')
  ? accept({ headers: [{ op: 'add', name: 'Received', value: 'from a by b' }, { op: 'add', name: 'Received', value: 'from c by d' }] }) : undefined;`,
    },
  });
  try {
    const quoted = Array.from({ length: 60 }, (_, i) => `Received: from hop${i}.example by hop${i + 1}.example`).join('\n');
    const body = await s.send('a@origin.test', ['b@dest.test'], `From: <a@origin.test>\nSubject: a quoted trace\n\n${quoted}\n`);
    const e = await s.nextAttempt((x) => x.id === body, { past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    await assert.rejects(s.send('a@origin.test', ['c@dest.test'], `${quoted}\nFrom: <a@origin.test>\nSubject: looping\n\nbody\n`), /not queued: 554 5\.4\.6 /);
    const fewer = quoted.split('\n').slice(0, 49).join('\n'); // 49 and ours pass the door; the script's two make 52
    const header = await s.send('a@origin.test', ['c@dest.test'], `${fewer}\nFrom: <a@origin.test>\nSubject: looping\n\nbody\n`);
    const loop = await s.nextAttempt((x) => x.id === header, { past: true });
    assert.equal(loop.outcomes[0]!.status, 'permanent');
    assert.equal(loop.outcomes[0]!.enhanced, '5.4.6');
  } finally {
    await s.stop();
    await sink.close();
  }
});

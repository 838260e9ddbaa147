// A bounce bigger than the next hop takes. A message just within a next hop's SIZE (1 MiB here) with RET=FULL is
// refused for its recipient; its bounce returns it whole, and is those few KB more than the message: the same next
// hop refused the bounce for its size, and as a bounce (null sender) it was discarded — the sender never heard of the
// failure. It is sent again with the message's header only, which the next hop takes and Python reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const run = promisify(execFile);
const scratch = useScratchDir('postern-dsn-size-');

const READ = `
import sys, json, email
from email import policy
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=policy.default)
parts = m.get_payload()
print(json.dumps({
    'parts': [p.get_content_type() for p in parts], 'text': parts[0].get_content(),
    'defects': [f'{p.get_content_type()}: {d!r}' for p in m.walk() for d in p.defects],
    'blocks': [dict(b.items()) for p in m.walk() if p.get_content_type() == 'message/delivery-status' for b in p.get_payload()],
    'returned': parts[2].get_content() if len(parts) > 2 else '',
}))
`;

test('a RET=FULL bounce that the next hop refuses for its size is sent again with the header only, not discarded', { timeout: 120_000 }, async () => {
  const SIZE = 1024 * 1024;
  const sink = await startSink({ size: SIZE, decide: (stage, address) => (stage === 'rcpt' && address.startsWith('gone') ? { code: 550, text: '5.1.1 <gone@dest.test>: User unknown' } : null) });
  const s = await startDeliveryServer({
    config: configYaml({ listeners: [testListener('in')], localDomains: ['example.test'], delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }) }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    const body = `${'x'.repeat(98)}\r\n`.repeat(10_470); // 1,047,000 bytes: the message is within SIZE, its whole return is not
    const id = await sendWithParams(c, '<me@example.test> RET=FULL', ['<gone@dest.test>'], `From: me@example.test\r\nSubject: big\r\n\r\n${body}`);
    await c.quit();
    const e = await s.nextAttempt((x) => x.id === id && x.removed, { timeoutMs: 30_000, past: true });
    assert.ok(e.bounceId);
    const first = await s.nextAttempt((x) => x.id === e.bounceId && x.removed, { timeoutMs: 30_000, past: true });
    assert.deepEqual(first.outcomes.map((o) => [o.status, o.enhanced]), [['permanent', '5.3.4']], 'the whole return is over the next hop\'s SIZE');
    assert.ok(first.bounceId, 'the refused notice is spooled again, not discarded');
    const second = await s.nextAttempt((x) => x.id === first.bounceId && x.removed, { timeoutMs: 30_000, past: true });
    assert.deepEqual(second.outcomes.map((o) => [o.recipient, o.status]), [['me@example.test', 'delivered']]);
    const bounces = sink.messages.filter((m) => m.from === '');
    assert.equal(bounces.length, 1);
    assert.ok(bounces[0]!.data.length < 64 * 1024, `${bounces[0]!.data.length} bytes`);
    const read = JSON.parse((await run('python3', ['-c', READ, await scratch.file('bounce.eml', bounces[0]!.data)])).stdout) as {
      parts: string[]; text: string; defects: string[]; blocks: Array<Record<string, string>>; returned: string;
    };
    assert.deepEqual(read.defects, []);
    assert.deepEqual(read.parts, ['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
    assert.match(read.text, /the header of your message is attached/);
    assert.match(read.text, /refused for its size, so only its header is returned/);
    assert.doesNotMatch(read.text, /follows; your message is attached/);
    assert.equal(read.blocks[1]!['Final-Recipient'], 'rfc822; gone@dest.test');
    assert.match(read.returned, /^Subject: big$/m);
    assert.doesNotMatch(read.returned, /xxxx/, 'the header only');
  } finally {
    await s.stop();
    await sink.close();
  }
});

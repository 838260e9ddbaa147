/**
 * `postern queue delete` run by an administrator under `postern serve` (two workers, the queue process
 * delivering) while a message's attempt is under way: the next hop then refuses it (550). The command promises
 * "removed without delivery or bounce" (postsuper -d); the queue process sent the sender a non-delivery
 * notification all the same, so deleting a queue of spam sent the in-flight messages' refusals to their
 * forged senders. A message not deleted still bounces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type net from 'node:net';
import { startCluster, ROUND_ROBIN } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { runCli } from '../helpers/cli.ts';

test('a message deleted during its attempt, then refused by the next hop: no bounce; one not deleted still bounces', { timeout: 180_000 }, async () => {
  // The next hop keeps the end of DATA of each message whose own Subject is "hold-me" unanswered until the test answers it.
  const waiting: net.Socket[] = [];
  const notifications: string[] = [];
  const peer = await startScriptedPeer({
    endOfData(s, message) {
      const header = message.slice(0, message.indexOf('\r\n\r\n'));
      if (/^Subject: hold-me/m.test(header)) { waiting.push(s); return 'answered'; }
      if (/^Content-Type: multipart\/report/im.test(header)) notifications.push(message);
    },
  });
  const c = await startCluster({
    config: `
workers: 2
${ROUND_ROBIN}
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${peer.port} } }
  tls: { mode: none }
  retrySchedule: [3600]
  scanIntervalMs: 200
`,
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    const deleted = await submitMessage(c.port('in'), 'someone@origin.test', ['a@dest.test'], 'Subject: hold-me deleted\r\n\r\nx\r\n');
    const kept = await submitMessage(c.port('in'), 'other@origin.test', ['b@dest.test'], 'Subject: hold-me kept\r\n\r\nx\r\n');
    await c.waitFor('both messages at the end of DATA', () => waiting.length === 2);
    const r = await runCli(['queue', 'delete', deleted, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(r.stdout, `${deleted}: deleted\n`, r.stderr);
    for (const s of waiting) s.write('550 5.7.1 Refused\r\n');

    const finished = (id: string) => c.waitFor(`${id} finished`, () => c.logs.find((l) => l.id === id && l.msg === 'message finished, removed from the spool'));
    assert.equal((await finished(deleted)).bounce, null, 'no bounce for the deleted message');
    const bounce = (await finished(kept)).bounce;
    assert.equal(typeof bounce, 'string', 'the other one bounced');
    await c.waitFor('its bounce delivered', () => c.logs.some((l) => l.id === bounce && l.status === 'sent'));
    assert.equal(notifications.length, 1);
    assert.match(notifications[0]!, /other@origin\.test|b@dest\.test/);
    assert.ok(!c.logs.some((l) => l.id === deleted && /sender non-delivery notification/.test(String(l.msg))));
  } finally {
    await c.stop();
    peer.close();
  }
});

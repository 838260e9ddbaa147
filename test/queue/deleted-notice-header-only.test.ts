// `postern queue delete --from '<>'`: an administrator clears the bounces in the queue (backscatter of a spam run). A
// bounce under way when it is deleted that its next hop then refuses for its size (it returns the message whole,
// RET=FULL) was spooled again with the header only, and that copy went out: a deleted message sent a bounce. A real
// server and a scripted next hop on loopback that holds the end of the bounce's data for the delete.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import type net from 'node:net';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startCluster, spooled, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient, sendWithParams } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

test('a bounce deleted while its next hop reads it, then refused for its size, is not sent again with the header only', { timeout: 120_000 }, async () => {
  let heldData: (s: net.Socket) => void = () => undefined;
  const dataHeld = new Promise<net.Socket>((resolve) => { heldData = resolve; });
  let nullSender = false;
  const accepted: string[] = [];
  const peer = await startScriptedPeer({
    mail: (_s, line) => { nullSender = /^MAIL FROM:<>/i.test(line); },
    rcpt: (s, line) => (/gone@dest\.test/i.test(line) ? (s.write('550 5.1.1 <gone@dest.test>: User unknown\r\n'), 'answered') : undefined),
    endOfData: (s, message) => {
      if (!nullSender) return undefined;
      if (/Content-Type: message\/rfc822/.test(message)) { heldData(s); return 'answered'; } // the whole return: held
      accepted.push(message);
      return undefined;
    },
  });
  const dataRoot = await mkdtemp(join(tmpdir(), 'postern-deleted-notice-'));
  const config = `
workers: 1
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${peer.port} } }
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [0.2]
`;
  let c: ClusterProcess | null = null;
  try {
    c = await startCluster({ config, scripts: { 'rcptto.ts': 'export default () => accept();' }, dataDir: join(dataRoot, 'data') });
    const client = await SmtpTestClient.connect(c.port('in'));
    await client.hello();
    const id = await sendWithParams(client, '<forged@origin.test> RET=FULL', ['<gone@dest.test>'], 'From: forged@origin.test\r\nSubject: spam\r\n\r\nbuy now\r\n');
    await client.quit();
    const socket = await dataHeld;
    const notified = c.logs.find((l) => l.id === id && typeof l.bounce === 'string' && /non-delivery notification/.test(String(l.msg)));
    assert.ok(notified, 'the bounce was spooled');
    const deleted = await runCli(['queue', 'delete', '--from', '<>', '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(deleted.code, 0, deleted.stderr);
    socket.write('552 5.3.4 Message size exceeds fixed limit\r\n');
    await c.waitFor('the bounce\'s attempt recorded', () => c!.logs.find((l) => l.id === notified.bounce && /^to=|status=bounced/.test(String(l.msg))));
    await c.waitFor('nothing left in the queue', async () => (await spooled(c!)).size === 0);
    assert.deepEqual(accepted.map((m) => m.slice(0, 300)), [], 'no copy of the deleted bounce reached the next hop');
  } finally {
    await c?.stop();
    peer.close();
    await rm(dataRoot, { recursive: true, force: true });
  }
});

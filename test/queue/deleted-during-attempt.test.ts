// `postern queue delete` removes a message "without delivering or bouncing it". An administrator deletes a spam run
// with forged senders while its attempts are under way (a next hop slow to answer RCPT): the next hop then refuses
// the recipient for good. A real `postern serve` (supervisor, worker, queue process) and a scripted next hop on
// loopback: the attempt that ends after the delete must not bounce to the (forged) sender — that is backscatter, the
// very thing the delete was for. It did: the bounce was spooled at the attempt's record and delivered.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import type net from 'node:net';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

test('a message deleted by `postern queue delete` while its attempt runs is not bounced when the next hop then refuses it', { timeout: 120_000 }, async () => {
  let heldRcpt: (s: net.Socket) => void = () => undefined;
  const rcptHeld = new Promise<net.Socket>((resolve) => { heldRcpt = resolve; });
  const nullSenders: string[] = [];
  const peer = await startScriptedPeer({
    mail: (_s, line) => { if (/^MAIL FROM:<>/i.test(line)) nullSenders.push(line); },
    // The first RCPT to the spam target waits for the test (the delete), then is refused for good.
    rcpt: (s, line) => (/victim@dest\.test/i.test(line) ? (heldRcpt(s), 'answered') : undefined),
  });
  const dataRoot = await mkdtemp(join(tmpdir(), 'postern-deleted-during-attempt-'));
  const config = `
workers: 1
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${peer.port} } }
  tls: { mode: none }
  scanIntervalMs: 200
`;
  let c: ClusterProcess | null = null;
  try {
    c = await startCluster({ config, scripts: { 'rcptto.ts': 'export default () => accept();' }, dataDir: join(dataRoot, 'data') });
    const id = await submitMessage(c.port('in'), 'forged@origin.test', ['victim@dest.test']);
    const socket = await rcptHeld;
    const deleted = await runCli(['queue', 'delete', id, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(deleted.code, 0, deleted.stderr);
    socket.write('550 5.1.1 <victim@dest.test>: Recipient address rejected: User unknown\r\n');
    const finished = await c.waitFor('the attempt recorded', () => c!.logs.find((l) => l.id === id && l.msg === 'message finished, removed from the spool'));
    assert.equal(finished.bounce, null, 'no bounce spooled for the deleted message');
    assert.equal(c.logs.find((l) => l.id === id && l.bounce && l.msg !== 'message finished, removed from the spool'), undefined, 'no non-delivery notification logged');
    const listed = await runCli(['queue', 'list', '--json', '-c', join(c.dir, 'postern.yaml')]);
    assert.deepEqual((JSON.parse(listed.stdout) as { messages: unknown[] }).messages, [], 'nothing left in the queue (no bounce waiting)');
    assert.deepEqual(nullSenders, [], 'no bounce reached the next hop');
  } finally {
    await c?.stop();
    peer.close();
    await rm(dataRoot, { recursive: true, force: true });
  }
});

// `postern queue delete` removes a message "without delivering or bouncing it", also while its attempt runs: that
// attempt's failures are then not bounced (deleted-during-attempt.test.ts). But a notice an earlier run of the same
// attempt had spooled, before a crash kept its outcome from being recorded, waited for that record and then went out:
// the sender got a bounce for the message deleted to stop them (a spam run with forged senders). A real `postern serve`
// (supervisor, one worker, the queue process) and a scripted next hop on loopback: the first run has `victim` refused
// (550) and `later` deferred, so a bounce naming `victim` is spooled, and the queue process is killed (the crash walk)
// at the rename of the state file that records the attempt. The run after the restart is deleted while the next hop
// holds its RCPT for `victim`, then refused again. No bounce may reach the next hop.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type net from 'node:net';
import { crashWalk, startWalkedServer } from '../helpers/crash-walk.ts';
import { deliveryToSink } from '../helpers/cluster.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

const walk = crashWalk();

test('a notice spooled before a crash by an attempt of a message deleted during the next run of that attempt is not sent', { timeout: 180_000 }, async () => {
  let victimRcpts = 0;
  let heldRcpt: (s: net.Socket) => void = () => undefined;
  const rcptHeld = new Promise<net.Socket>((resolve) => { heldRcpt = resolve; });
  const nullSenders: string[] = [];
  const peer = await startScriptedPeer({
    mail: (_s, line) => { if (/^MAIL FROM:<>/i.test(line)) nullSenders.push(line); },
    rcpt: (s, line) => {
      if (/victim@example\.test/i.test(line)) {
        // The first run: refused at once. The run after the crash: held until the message is deleted.
        if (++victimRcpts === 1) { s.write('550 5.1.1 <victim@example.test>: User unknown\r\n'); return 'answered'; }
        heldRcpt(s);
        return 'answered';
      }
      if (/later@example\.test/i.test(line)) { s.write('451 4.2.0 Try again later\r\n'); return 'answered'; }
      return undefined;
    },
  });
  const { c, remove } = await startWalkedServer(walk, deliveryToSink(peer.port, { retrySchedule: [3600], scanIntervalMs: 200 }));
  const config = join(c.dir, 'postern.yaml');
  try {
    walk.arm(1, 'kill', { call: 'rename', pathEnd: '.state' });
    const id = await submitMessage(c.port('in'), 'forged@origin.test', ['victim@example.test', 'later@example.test']);
    const socket = await rcptHeld;
    assert.ok(walk.taken(), 'the queue process was killed before the first run of the attempt was recorded');
    const deleted = await runCli(['queue', 'delete', id, '-c', config]);
    assert.equal(deleted.code, 0, deleted.stderr);
    socket.write('550 5.1.1 <victim@example.test>: User unknown\r\n');
    await c.waitFor('the record of the deleted message\'s attempt', () => c.logs.some((l) => l.id === id && /deleted during its attempt/.test(String(l.msg))));
    // The notice is withdrawn and removed at once; left, it would wait a retry delay (an hour here), then go out.
    await c.waitFor('no bounce left in the queue for the deleted message', async () => {
      const listed = await runCli(['queue', 'list', '--json', '-c', config]);
      return (JSON.parse(listed.stdout) as { messages: unknown[] }).messages.length === 0;
    });
    assert.deepEqual(nullSenders, [], 'a bounce for the deleted message reached the next hop');
  } finally {
    walk.disarm();
    await c.stop();
    peer.close();
    await remove();
  }
});

// `postern queue delete` removes a message "without delivering or bouncing it", also while the attempt under way is a
// crash-forced rerun. A real `postern serve` (supervisor, one worker, the queue process) and a scripted next hop on
// loopback: the first run of attempt 1 has `victim` refused for good (550) and `later` deferred, so a notice naming
// `victim` is spooled; the queue process is killed (the crash walk, at the rename of the state file that records the
// attempt) before the attempt's outcome is on disk. Restarted, it runs the attempt again; the next hop holds its RCPT
// for `later` while the administrator deletes the message. No bounce may reach the (forged) sender: the notice the
// crashed run spooled was held back only while its message was in the queue, and once it was deleted it went out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type net from 'node:net';
import { crashWalk, startWalkedServer } from '../helpers/crash-walk.ts';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { spooled } from '../helpers/cluster.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';

const walk = crashWalk();

test('a message deleted while the rerun of its crashed attempt runs sends no bounce, not even the one the crashed run spooled', { timeout: 180_000 }, async () => {
  let laterRuns = 0;
  let heldRcpt: (s: net.Socket) => void = () => undefined;
  const rcptHeld = new Promise<net.Socket>((resolve) => { heldRcpt = resolve; });
  const nullSenders: string[] = [];
  const peer = await startScriptedPeer({
    mail: (_s, line) => { if (/^MAIL FROM:<>/i.test(line)) nullSenders.push(line); },
    rcpt: (s, line) => {
      if (/victim@example\.test/i.test(line)) { s.write('550 5.1.1 <victim@example.test>: User unknown\r\n'); return 'answered'; }
      if (!/later@example\.test/i.test(line)) return undefined;
      // Run 1: deferred (and then killed at its record); the rerun: held for the delete.
      if (++laterRuns === 1) { s.write('451 4.2.0 Try again later\r\n'); return 'answered'; }
      heldRcpt(s);
      return 'answered';
    },
  });
  const config = `delivery:\n  route: { smarthost: { host: 127.0.0.1, port: ${peer.port} } }\n  tls: { mode: none }\n  scanIntervalMs: 200\n  retrySchedule: [0.2]\n`;
  const { c, remove } = await startWalkedServer(walk, config);
  try {
    walk.arm(1, 'kill', { call: 'rename', pathEnd: '.state' });
    const id = await submitMessage(c.port('in'), 'forged@origin.test', ['victim@example.test', 'later@example.test']);
    const socket = await rcptHeld;
    assert.ok(walk.taken(), 'the queue process was killed before the first run of the attempt was recorded');
    walk.disarm();
    const deleted = await runCli(['queue', 'delete', id, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(deleted.code, 0, deleted.stderr);
    // The notice's own attempts (every 0.2 s) meanwhile: it is sent, or withdrawn and removed, before the rerun ends.
    await c.waitFor('nothing left in the queue while the rerun still runs', async () => (await spooled(c)).size === 0);
    socket.write('451 4.2.0 Try again later\r\n');
    await c.waitFor('the rerun recorded as deleted', () => c.logs.find((l) => l.id === id && /deleted during its attempt/.test(String(l.msg))));
    await c.waitFor('nothing left in the queue', async () => (await spooled(c)).size === 0);
    assert.deepEqual(nullSenders, [], 'no bounce reached the next hop');
  } finally {
    walk.disarm();
    await c.stop();
    peer.close();
    await remove();
  }
});

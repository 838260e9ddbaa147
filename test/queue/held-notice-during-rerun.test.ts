// A bounce put on hold (`postern queue hold --from '<>'`) while a crash-forced rerun of its attempt runs. A real
// `postern serve` (supervisor, one worker, the queue process) and a scripted next hop on loopback: the first run of
// attempt 1 has `victim` refused for good (550) and `later` deferred, so a notice naming `victim` is spooled; the queue
// process is killed at the rename of the state file that records the attempt. Restarted, it runs the attempt again;
// the next hop holds its RCPT for `later` while the administrator holds the bounces, and the queue process sees the
// hold. The rerun then finds `victim` refused again: it must find the held notice, not spool a second one under the
// same id (the runner took a notice it did not have in hand for absent, and a held one it does not have in hand), and
// once released the sender gets one bounce.
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

test('a bounce held while the rerun of its crashed attempt runs is found by that rerun: one bounce once released', { timeout: 180_000 }, async () => {
  let laterRuns = 0;
  let heldRcpt: (s: net.Socket) => void = () => undefined;
  const rcptHeld = new Promise<net.Socket>((resolve) => { heldRcpt = resolve; });
  const bounces: string[] = [];
  let nullSender = false;
  const peer = await startScriptedPeer({
    mail: (_s, line) => { nullSender = /^MAIL FROM:<>/i.test(line); },
    endOfData: (_s, message) => { if (nullSender) bounces.push(message); return undefined; },
    rcpt: (s, line) => {
      if (/victim@example\.test/i.test(line)) { s.write('550 5.1.1 <victim@example.test>: User unknown\r\n'); return 'answered'; }
      if (!/later@example\.test/i.test(line)) return undefined;
      // Run 1: deferred (and then killed at its record); the rerun: held for the delete.
      if (++laterRuns === 2) { heldRcpt(s); return 'answered'; }
      s.write('451 4.2.0 Try again later\r\n');
      return 'answered';
    },
  });
  const config = `delivery:\n  route: { smarthost: { host: 127.0.0.1, port: ${peer.port} } }\n  tls: { mode: none }\n  scanIntervalMs: 200\n  retrySchedule: [0.2, 3600]\n`;
  const { c, remove } = await startWalkedServer(walk, config);
  try {
    walk.arm(1, 'kill', { call: 'rename', pathEnd: '.state' });
    const id = await submitMessage(c.port('in'), 'forged@origin.test', ['victim@example.test', 'later@example.test']);
    const socket = await rcptHeld;
    assert.ok(walk.taken(), 'the queue process was killed before the first run of the attempt was recorded');
    walk.disarm();
    const held = await runCli(['queue', 'hold', '--from', '<>', '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(held.code, 0, held.stderr);
    await c.waitFor('the queue process sees the notice held', () => c.logs.find((l) => l.held === true && l.id !== id));
    socket.write('451 4.2.0 Try again later\r\n');
    // Logged by run 1 (before its kill) and by the rerun.
    await c.waitFor('the rerun recorded', () => c.logs.filter((l) => l.id === id && /sender non-delivery notification/.test(String(l.msg))).length >= 2);
    const released = await runCli(['queue', 'release', '--all', '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(released.code, 0, released.stderr);
    await c.waitFor('a bounce delivered', () => bounces.length >= 1);
    // `later` is deferred for good: the message stays; the bounces are out once nothing but it is queued.
    await c.waitFor('nothing but the message left in the queue', async () => [...await spooled(c)].every((x) => x === id));
    assert.equal(bounces.filter((b) => /Final-Recipient: rfc822; victim@example\.test/.test(b)).length, 1, 'one bounce names victim');
  } finally {
    walk.disarm();
    await c.stop();
    peer.close();
    await remove();
  }
});

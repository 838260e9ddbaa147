/**
 * A worker at its open-file limit (EMFILE) while the supervisor hands it connections: a descriptor it cannot
 * accept leaves Node's channel waiting for an acknowledgement that never comes, so every later connection
 * handed to it waited for ever while its heartbeats went on. With one worker the server greeted no one
 * again, even once descriptors were free. The supervisor now replaces a worker that takes no handed-over
 * connection for 10 s. (The supervisor at its own limit closes what it cannot accept and carries on.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { greeted, startCluster, workerPid } from './helpers.ts';

/** The soft and hard open-file limits of a process. */
function fileLimits(pid: number): { soft: string; hard: string } {
  const m = /Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))!;
  return { soft: m[1]!, hard: m[2]! };
}

test('a worker that ran out of file descriptors while connections were handed to it is replaced; the server greets and accepts again', { timeout: 120_000 }, async () => {
  const c = await startCluster({
    config: `
workers: 1
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
  });
  const sockets: net.Socket[] = [];
  try {
    const worker = await workerPid(c, 0);
    const limits = fileLimits(worker);
    // Room for a few more descriptors only: the connections after those cannot be received.
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=${readdirSync(`/proc/${worker}/fd`).length + 3}:${limits.hard}`]);
    const closed: number[] = [];
    for (let i = 0; i < 12; i++) {
      const s = net.connect(c.port('in'), '127.0.0.1');
      s.on('error', () => undefined);
      s.on('close', () => closed.push(i));
      sockets.push(s);
    }
    await c.waitFor('connections refused or left waiting', () => sockets.every((s) => s.readyState === 'open' || s.destroyed));
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=${limits.soft}:${limits.hard}`]);
    for (const s of sockets) s.destroy();

    // Descriptors are free again: a new client is served (by a replacement), and says so in the log.
    const client = await greeted(c);
    assert.equal((await client.sendMail('a@example.test', ['b@example.test'])).code, 250);
    await client.quit();
    assert.ok(c.logs.some((l) => /worker 0 takes no connections handed to it: replacing it/.test(String(l.msg))), 'the replacement is logged');
  } finally {
    for (const s of sockets) s.destroy();
    await c.stop();
  }
});

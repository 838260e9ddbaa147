/**
 * What a worker of `postern serve` still holds for a log reader that fell behind is written when it exits (a stop,
 * a replacement, a crash): those lines too must come out whole on the stdout the processes share. They were written
 * with one write per held chunk (up to the 16 MiB backlog), which a pipe takes whole only up to PIPE_BUF (4096
 * bytes): two workers exiting together cut each other's lines into broken JSON. Real processes, real SMTP, a reader
 * taking 1500 bytes every 2 ms, the bytes as it got them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { startCluster, TWO_WORKERS, ROUND_ROBIN } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const SLOW_READER = `
import os, sys, subprocess, signal, time
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
signal.signal(signal.SIGTERM, lambda *a: p.send_signal(signal.SIGTERM))
fd = p.stdout.fileno()
while True:
    try:
        b = os.read(fd, 1500)
    except InterruptedError:
        continue
    if not b:
        break
    os.write(1, b)
    time.sleep(0.002)
sys.exit(p.wait())
`;

const LONG = 'a'.repeat(3000) + 'é'.repeat(500);
const CLIENTS = 2;
const ROUNDS = 5;
const LINES = 20;

test('lines held for a slow reader come out whole when the workers exit', async () => {
  const c = await startCluster({
    config: ROUND_ROBIN + TWO_WORKERS,
    wrap: ['python3', '-c', SLOW_READER],
    scripts: {
      'rcptto.js': `export default (ctx) => {
        for (let i = 0; i < ${LINES}; i++) log('L' + ctx.address.localPart + ' ' + i + ' ' + ${JSON.stringify(LONG)});
      };`,
    },
  });
  try {
    await c.waitFor('both workers', async () => (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length === 2);
    const clients = await Promise.all(Array.from({ length: CLIENTS }, async () => {
      const s = await SmtpTestClient.connect(c.port('in'));
      await s.hello();
      assert.match((await s.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
      return s;
    }));
    for (let round = 0; round < ROUNDS; round++) {
      await Promise.all(clients.map(async (s, i) => assert.match((await s.command(`RCPT TO:<w${i}r${round}@example.test>`)).text, /^250 /)));
    }
    await Promise.all(clients.map((s) => s.quit()));
    // Stopped while the reader is still behind: each worker exits with lines held.
    const closed = once(c.proc, 'close');
    c.proc.kill('SIGTERM');
    await closed;
    const broken = c.lines.filter((l) => { try { JSON.parse(l); return false; } catch { return true; } });
    assert.deepEqual(broken.map((l) => `${l.slice(0, 80)}…`), [], 'every line is whole JSON');
    const long = c.lines.filter((l) => Buffer.byteLength(l) + 1 > 4096);
    assert.equal(long.length, 0, `${long.length} lines longer than one atomic pipe write`);
    const held = c.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('Lw')).length;
    assert.equal(held, CLIENTS * ROUNDS * LINES, 'every script line written');
  } finally {
    await c.stop();
  }
});

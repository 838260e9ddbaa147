/**
 * Under `postern serve` the workers share the supervisor's stdout, and a write to a pipe is whole only up to
 * PIPE_BUF (4096 bytes). A script's log() line may be 8192 characters: once the log's reader fell behind
 * (journald under load; here a reader taking 1500 bytes every 2 ms), such a line was written in pieces and the
 * other worker's lines landed inside it — 48 of 248 lines came out as broken JSON. Each line written now fits
 * one atomic write; a longer one is split into whole lines carrying `part: "i/n"`, whose pieces give the value back.
 * Real processes, real SMTP, the bytes as the reader got them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, TWO_WORKERS, ROUND_ROBIN } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

// Between the server and the test: reads the server's stdout slowly, as a log reader that falls behind does.
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

const LONG = 'a'.repeat(4000) + '\u200b' + 'é'.repeat(3000);
const CLIENTS = 2;
const ROUNDS = 5;
const LINES = 10;

test('long script log lines of two workers on one stdout each come out whole, as lines of at most 4096 bytes', async () => {
  const c = await startCluster({
    config: ROUND_ROBIN + TWO_WORKERS,
    wrap: ['python3', '-c', SLOW_READER],
    scripts: {
      'rcptto.js': `export default (ctx) => {
        const local = ctx.address.localPart;
        if (local.startsWith('done')) return log('Ldone ' + local);
        for (let i = 0; i < ${LINES}; i++) log('L' + local + ' ' + ${JSON.stringify(LONG)});
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
    await Promise.all(clients.map(async (s, i) => assert.match((await s.command(`RCPT TO:<done${i}@example.test>`)).text, /^250 /)));
    await c.waitFor('every client\'s last line', () => clients.every((_, i) => c.lines.some((l) => l.includes(`Ldone done${i}`))));
    await Promise.all(clients.map((s) => s.quit()));

    const long = c.lines.filter((l) => Buffer.byteLength(l) + 1 > 4096);
    assert.equal(long.length, 0, `${long.length} lines longer than one atomic pipe write`);
    const broken = c.lines.filter((l) => { try { JSON.parse(l); return false; } catch { return true; } });
    assert.deepEqual(broken.map((l) => `${l.slice(0, 80)}…`), [], 'every line is whole JSON');
    // Each log() line comes back from its parts, which its process wrote in order.
    const pieces = new Map<unknown, string>();
    const whole: string[] = [];
    for (const l of c.logs) {
      if (typeof l.msg !== 'string' || l.component !== 'script') continue;
      if (l.part === undefined) { whole.push(l.msg); continue; }
      const [i, n] = String(l.part).split('/').map(Number);
      const text = (i === 1 ? '' : pieces.get(l.pid) ?? '') + l.msg;
      if (i === n) { whole.push(text); pieces.delete(l.pid); } else pieces.set(l.pid, text);
    }
    const expected = clients.flatMap((_, i) => Array.from({ length: ROUNDS }, (__, r) => `Lw${i}r${r} ${LONG.replace('\u200b', '\\u{200b}')}`));
    for (const line of expected) assert.equal(whole.filter((w) => w === line).length, LINES, `${line.slice(0, 12)}: ${LINES} whole lines`);
  } finally {
    await c.stop();
  }
});

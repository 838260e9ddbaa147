/**
 * The log's reader stops reading (journald stalled, `postern serve | less` left paused): the stdout pipe of
 * `postern serve` fills. Every process waited for it, up to 10 s per write, with its event loop held: the
 * worker's watchdog killed it as hung, every session was cut, the replacement met the same full pipe, and no
 * mail was taken until the reader came back. Now what does not fit waits in memory (bounded, then dropped
 * and counted), mail flows, no process is replaced, and once the reader reads again the lines arrive, in
 * order; past the bound, a line says how many were dropped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';

test('a log reader that stops reading neither stops mail nor gets a process replaced; the lines come once it reads again', { timeout: 240_000 }, async () => {
  // A small bound, so that this test also goes past it.
  const c = await startCluster({ config: ONE_WORKER, env: { POSTERN_LOG_BACKLOG_BYTES: String(256 * 1024) } });
  try {
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    const before = c.logs.length;
    c.proc.stdout!.pause(); // the pipe fills: 64 KiB in the kernel, then this side's buffer
    const ids: string[] = [];
    // ~1.5 KB of log per message: far more than the pipe holds, and past the 256 KiB bound.
    for (let session = 0; session < 20; session++) {
      const client = await greeted(c);
      for (let i = 0; i < 25; i++) {
        const r = await client.sendMail('sender@example.test', ['user@example.test'], `Subject: ${session}/${i}\r\n\r\nx\r\n`);
        assert.equal(r.code, 250, r.text);
        ids.push(/queued as ([0-9a-z]+)/.exec(r.text)![1]!);
        const refused = await client.command('RCPT TO:<nobody@elsewhere.example>'); // a refusal: a decision line
        assert.ok(refused.code >= 500, refused.text);
        await client.command('RSET');
      }
      await client.quit();
    }
    assert.equal(ids.length, 500, 'every message taken while the log was not read');
    c.proc.stdout!.resume();
    await c.waitFor('the dropped lines counted', () => c.logs.slice(before).some((l) => /log lines dropped: stdout was not read/.test(String(l.msg))), 60_000);
    const status = await c.cluster();
    assert.deepEqual(status.processes.map((p) => p.restarts), [0, 0], 'no process replaced');
    assert.ok(!c.logs.some((l) => /hung|stopped answering|died/.test(String(l.msg))), 'nothing taken for hung');
    // In order, and the first lines kept: what did not fit was kept before anything was dropped.
    const accepted = c.logs.slice(before).filter((l) => /: accepted from=/.test(String(l.msg))).map((l) => String(l.msg).split(':')[0]!);
    assert.ok(accepted.length > 0 && accepted.length < ids.length, `${accepted.length} acceptance lines of ${ids.length}`);
    assert.deepEqual(accepted.slice(0, 20), ids.slice(0, 20), 'the first ones, in order');
    // Once read again, lines flow as before.
    const client = await greeted(c);
    const r = await client.sendMail('sender@example.test', ['user@example.test'], 'Subject: after\r\n\r\nx\r\n');
    await client.quit();
    const id = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    await c.waitFor('its acceptance line', () => c.logs.some((l) => String(l.msg).startsWith(`${id}: accepted`)), 60_000);
  } finally {
    c.proc.stdout!.resume();
    await c.stop();
  }
});

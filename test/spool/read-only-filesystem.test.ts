/**
 * The spool's filesystem made read-only by the kernel after an error (ext4 errors=remount-ro, here a loop-mounted
 * image and trigger_fs_error). The mount still says rw, statfs has no ST_RDONLY and access(W_OK) passes, so nothing
 * looked: every client sent its whole message for a 451 at its end. Now MAIL FROM gets 451 4.3.0 with a decision line
 * naming the cause, a transaction already under way gets it at the end of DATA, one error line says why, and /readyz
 * says so too.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { greeted, ONE_WORKER, startCluster } from '../helpers/cluster.ts';
import { until } from '../helpers/wait.ts';
import { ext4Filesystem, needsExt4, needsTmpfs, remountReadOnly, testFilesystem } from '../helpers/tmpfs.ts';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const skip = needsExt4();

test('on a spool the kernel made read-only MAIL FROM gets 451 4.3.0; a transaction under way gets it at the end of DATA; /readyz says why', { skip, timeout: 180_000 }, async () => {
  const fs = ext4Filesystem(64);
  if (typeof fs === 'string') throw new Error(fs);
  const c = await startCluster({ config: `${ONE_WORKER}admin: { listen: "127.0.0.1:{PORT:admin}" }\nspool: { minFreeBytes: 0, minFreeInodes: 0 }\n`, dataDir: join(fs.dir, 'data') });
  try {
    const before = await greeted(c);
    assert.equal((await before.sendMail('a@example.test', ['b@example.test'])).code, 250, 'taken while writable');
    await before.quit();
    // A transaction begun before the error.
    const underWay = await greeted(c);
    assert.equal((await underWay.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await underWay.command('RCPT TO:<b@example.test>')).code, 250);

    fs.fail();

    await until('MAIL FROM refused with 451 4.3.0', async () => {
      const client = await greeted(c);
      try {
        const r = await client.command('MAIL FROM:<a@example.test>');
        assert.ok(r.code === 250 || r.code === 451, r.text); // 250 until the next look at the filesystem (once a second)
        return /^451 4\.3\.0 /.test(r.text);
      } finally {
        await client.quit();
      }
    }, { timeoutMs: 30_000, intervalMs: 300 });
    await c.waitFor('the decision line names the cause', () => c.logs.some((l) => l.decision === 'defer' && l.stage === 'MAIL' && l.reason === 'the spool\'s filesystem is read-only (EROFS)'));
    await c.waitFor('an error line says why, once', () => c.logs.some((l) => l.level === 50 && /^spool: the filesystem of .* is read-only \(EROFS/.test(String(l.msg))));

    assert.equal((await underWay.command('DATA')).code, 354);
    const end = await underWay.command('Subject: x\r\n\r\nhello\r\n.');
    assert.match(end.text, /^451 4\.3\.0 /);
    await underWay.quit();

    const ready = await fetch(`http://127.0.0.1:${c.port('admin')}/readyz`);
    assert.equal(ready.status, 503);
    assert.match((await ready.json() as { checks: { spool: { detail: string } } }).checks.spool.detail, /^the spool's filesystem \(.*\) is read-only: new mail is refused \(451 4\.3\.0\)/);
  } finally {
    await c.stop();
    fs.unmount();
  }
});

test('a spool remounted read-only and then writable again: refused meanwhile, taken again after, with a line each way', { skip: needsTmpfs(), timeout: 120_000 }, async () => {
  const fs = testFilesystem(32);
  const s = await startTestServer({ dataDir: join(fs.dir, 'data'), config: configYaml({ localDomains: ['example.test'], spool: { minFreeBytes: 0, minFreeInodes: 0 }, listeners: [testListener('in')] }) });
  let readOnly: { writable(): void } | null = null;
  try {
    const send = async (): Promise<string> => {
      const c = await SmtpTestClient.connect(s.port('in'));
      try {
        await c.hello();
        return (await c.sendMail('a@example.test', ['b@example.test'])).text;
      } finally {
        await c.quit();
      }
    };
    // Before any message: a remount cannot make read-only a filesystem with files open for writing (a journal
    // segment), which the kernel's emergency state after an error (the test above) does.
    readOnly = remountReadOnly(fs);
    await until('the server sees it', () => s.runtime.spool.freeSpace.short(0) === 'readOnly'); // looks once a second
    assert.match(await send(), /^451 4\.3\.0 /);
    assert.ok(s.logs.some((l) => l.level === 50 && /^spool: the filesystem of .* is read-only \(EROFS/.test(String(l.msg))), 'said once read-only');
    assert.ok(!s.logs.some((l) => l.msg === 'spooling failed'), 'refused before the message was sent');

    readOnly.writable();
    readOnly = null;
    await until('mail taken again', async () => /^250 /.test(await send()), { timeoutMs: 30_000, intervalMs: 200 });
    assert.ok(s.logs.some((l) => l.level === 40 && /^spool: the filesystem of .* is writable again/.test(String(l.msg))), 'said once writable again');
    assert.equal((await s.runtime.spool.list()).length, 1, 'the one acknowledged message');
  } finally {
    try {
      readOnly?.writable();
      await s.stop();
    } finally {
      fs.unmount();
    }
  }
});

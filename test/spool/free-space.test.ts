/** The spool's free-space floor (spool.minFreeBytes): below it new mail is refused with 452 4.3.1, over real SMTP. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

/** More than any disk has: the real filesystem is always "below" it. */
const HUGE = 2 ** 52;
const config = (floor: number): string => configYaml({
  localDomains: ['example.test'],
  spool: { minFreeBytes: floor },
  listeners: [testListener('in')],
});

test('below the free-space floor MAIL FROM gets 452 4.3.1; a transaction already under way gets it at the end of DATA', async () => {
  const s = await startTestServer({ config: config(HUGE) });
  try {
    const c = await SmtpTestClient.connect(s.port('in'));
    await c.hello();
    const mail = await c.command('MAIL FROM:<a@example.test>');
    assert.equal(mail.code, 452);
    assert.match(mail.text, /^452 4\.3\.1 /);
    await c.quit();

    // Room again (the floor lowered by a reload): accepted; a transaction started then, refused at its end
    // once the floor is back above the free space.
    await writeFile(join(s.dir, 'postern.yaml'), `dataDir: ${JSON.stringify(join(s.dir, 'data'))}\n${config(0)}`);
    assert.equal((await s.reloader.reload('test')).ok, true);
    const d = await SmtpTestClient.connect(s.port('in'));
    await d.hello();
    assert.equal((await d.command('MAIL FROM:<a@example.test>')).code, 250);
    assert.equal((await d.command('RCPT TO:<b@example.test>')).code, 250);
    await writeFile(join(s.dir, 'postern.yaml'), `dataDir: ${JSON.stringify(join(s.dir, 'data'))}\n${config(HUGE)}`);
    assert.equal((await s.reloader.reload('test')).ok, true);
    assert.equal((await d.command('DATA')).code, 354);
    const end = await d.command('Subject: x\r\n\r\nhello\r\n.');
    assert.match(end.text, /^452 4\.3\.1 /);
    await d.quit();
    assert.deepEqual(await s.runtime.spool.list(), [], 'nothing was spooled');
  } finally {
    await s.stop();
  }
});

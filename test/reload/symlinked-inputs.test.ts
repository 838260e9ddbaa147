// An input that is a symbolic link to a file in a folder no one watches (a script or a table kept in a repository
// checkout, linked into the scripts folder or beside postern.yaml): edited in place there, no watched folder has an
// event about it. Each input file and script is watched on its own too, through the link (path-watches.ts): the edit
// comes into force by its event, and the once-a-second poll finds nothing the file system did not report. A file
// written again and again beside postern.yaml (a log) is no input: it makes no reload. One script that cannot be
// watched on its own (a symlink loop) is reported by its build, and leaves the rest watched.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { MX_WITH_TABLE_CONFIG, mailFromReply, verdictScript } from './helpers.ts';

/** Until `s`'s reloader has finished `n` more polls of the inputs (each compares their status with the one before). */
async function polled(s: TestServer, n: number): Promise<void> {
  const until = s.reloader.watchEvents.polls + n;
  while (s.reloader.watchEvents.polls < until) await new Promise((r) => setTimeout(r, 50));
}

test('a script and a table linked from a folder no one watches: an edit in place there comes into force by its event', async () => {
  const elsewhere = await mkdtemp(join(tmpdir(), 'postern-checkout-'));
  const links = await mkdtemp(join(tmpdir(), 'postern-links-'));
  await writeFile(join(elsewhere, 'mailfrom.ts'), verdictScript('v1'));
  await writeFile(join(elsewhere, 'senders'), '');
  await symlink(join(elsewhere, 'senders'), join(links, 'senders'));
  const s = await startTestServer({ config: MX_WITH_TABLE_CONFIG.replace('./senders', join(links, 'senders')) });
  try {
    await symlink(join(elsewhere, 'mailfrom.ts'), join(s.dir, 'scripts', 'mailfrom.ts')); // an event in the scripts folder
    while ((await mailFromReply(s)) !== '550 5.7.1 v1') await new Promise((r) => setTimeout(r, 100));
    await s.reloader.whenIdle();
    const reloads = s.reloader.status.data.reloads;

    // A log written beside postern.yaml: events about a file that is no input.
    const others = s.reloader.watchEvents.others;
    for (let i = 0; i < 50; i++) await appendFile(join(s.dir, 'postern.log'), `line ${i}\n`);
    await polled(s, 2);
    assert.ok(s.reloader.watchEvents.others > others, 'the log file\'s events came (and were ignored)');
    assert.equal(s.reloader.status.data.reloads, reloads, 'no reload for a file that is no input');

    await writeFile(join(elsewhere, 'mailfrom.ts'), verdictScript('v2')); // in place, where no watched folder sees it
    while ((await mailFromReply(s)) !== '550 5.7.1 v2') await new Promise((r) => setTimeout(r, 100));
    await polled(s, 3); // a change only a poll found is judged unreported a poll after it
    assert.equal(s.reloader.status.data.watching, null, 'the script\'s edit came as an event, not from the poll');

    await writeFile(join(elsewhere, 'senders'), 'spam@x.example REJECT\n');
    while (s.runtime.generation.tables.get('senders')?.get('spam@x.example') !== 'REJECT') await new Promise((r) => setTimeout(r, 100));
    await polled(s, 3);
    assert.equal(s.reloader.status.data.watching, null, 'the table\'s edit came as an event, not from the poll');

    // A script that cannot be watched on its own (a symlink loop): its build says what is wrong with it, and the
    // folder still reports its entries; changes are still watched (not "unavailable" for the whole server).
    const refusedBefore = s.reloader.status.data.lastError;
    await symlink('rcptto.ts', join(s.dir, 'scripts', 'rcptto.ts'));
    while (s.reloader.status.data.lastError === refusedBefore) await new Promise((r) => setTimeout(r, 100));
    assert.match(String(s.reloader.status.data.lastError), /rcptto\.ts/);
    await rm(join(s.dir, 'scripts', 'rcptto.ts'));
    await writeFile(join(elsewhere, 'mailfrom.ts'), verdictScript('v3'));
    while ((await mailFromReply(s)) !== '550 5.7.1 v3') await new Promise((r) => setTimeout(r, 100));
    await polled(s, 3);
    assert.equal(s.reloader.status.data.watching, null, 'one script that cannot be watched does not stop the watching');
  } finally {
    await s.stop();
    await rm(elsewhere, { recursive: true, force: true });
    await rm(links, { recursive: true, force: true });
  }
});

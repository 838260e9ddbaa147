// A server at its open-file limit spools nothing: each message's file cannot be opened, and the client gets 451 and
// sends it again later, as it should. But each refusal also logged 'spooling failed' at error with its stack, so a
// busy server logged one per message for as long as the shortage lasted, burying the first. Now the first failure
// of a kind is logged at error, the repeats at debug (each message's decision line still says it was refused), and
// the first message spooled again says so once, with how many failed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { exhaustDescriptors } from '../helpers/process-resources.ts';
import { readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { until } from '../helpers/wait.ts';

/**
 * Descriptors of this process into the spool's message folders (a message file, a `.committing` marker, a folder
 * opened to be synced). The server closes those of a message after its 250 has left: filling the descriptors
 * before then lets the next message take the ones closed meanwhile (seen once on a loaded machine: 250, not 451).
 */
const spoolFilesOpen = (dataDir: string): string[] => readdirSync('/proc/self/fd').flatMap((fd) => {
  try {
    const target = readlinkSync(`/proc/self/fd/${fd}`);
    return target.startsWith(dataDir) && /\/(incoming|queue)(\/|$)/.test(target.slice(dataDir.length)) ? [target] : [];
  } catch {
    return []; // closed while listed
  }
});

test('messages refused at the open-file limit log the failure once per episode, and the recovery once', async () => {
  const s = await startTestServer({ config: PLAIN_MX_CONFIG, scripts: { 'rcptto.ts': 'export default () => accept();' } });
  const client = await SmtpTestClient.connect(s.port('mx'));
  try {
    await client.hello();
    // Larger than what is kept in memory (1 MiB): each message has a file of its own, opened as it is spooled.
    const large = `Subject: large\r\n\r\n${`${'x'.repeat(998)}\r\n`.repeat(1600)}`;
    assert.equal((await client.sendMail('a@example.com', ['b@example.com'], large)).code, 250, 'warm');
    const failed = (): Array<Record<string, unknown>> => s.logs.filter((l) => /spooling failed/.test(String(l.msg)) && Number(l.level) >= 50);
    for (let episode = 1; episode <= 2; episode++) {
      await until('the last message spooled has closed its files', () => spoolFilesOpen(join(s.dir, 'data')).length === 0);
      const full = exhaustDescriptors();
      const codes: number[] = [];
      try {
        for (let i = 0; i < 10; i++) {
          full.topUp();
          codes.push((await client.sendMail('a@example.com', ['b@example.com'], large)).code);
        }
      } finally {
        full.release();
      }
      assert.deepEqual(codes, Array(10).fill(451), 'each refused, to be sent again');
      assert.equal(failed().length, episode, `10 refused in episode ${episode}: logged at error once, not per message`);
      assert.match(JSON.stringify(failed().at(-1)), /EMFILE/);
      assert.equal((await client.sendMail('a@example.com', ['b@example.com'], large)).code, 250);
      const recovered = s.logs.filter((l) => /spooling works again/.test(String(l.msg)));
      assert.equal(recovered.length, episode, 'the first message spooled again says so once');
      assert.equal(recovered.at(-1)!.failures, 10);
    }
    await client.quit();
  } finally {
    client.destroy();
    await s.stop();
  }
});

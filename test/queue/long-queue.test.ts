/**
 * `postern queue` on a long queue (3,000 messages here, 100,000 in production trouble): each message's state
 * file and hold were looked for one by one, a failed open per message (most have neither), and the whole
 * listing built in memory before its first line. Now one directory listing per spool says which exist
 * (counted with strace: failed lookups of those files far below one per message), and the listing is printed as it is read.
 * The output is the same, in text and JSON, with a held message, one with a state file and one untouched.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Spool } from '../../engine/spool/spool.ts';
import { needs } from '../helpers/example.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
const MESSAGES = 3000;

test('postern queue on 3,000 messages: no lookup per message for files most do not have; the same listing', { ...needs('strace'), timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-long-queue-'));
  try {
    const spool = new Spool(join(dir, 'data', 'spool'));
    await spool.init();
    const ids: string[] = [];
    const commits: Array<Promise<void>> = [];
    for (let i = 0; i < MESSAGES; i++) {
      const id = spool.newId();
      ids.push(id);
      const writer = spool.create(id);
      writer.write(Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
      const now = new Date().toISOString();
      commits.push(writer.commit({
        version: 1, id, receivedAt: now, sender: `s${i}@example.net`, recipients: [{ address: `r${i}@example.org` }], size: 0,
        session: { listener: 'in', remoteAddress: '192.0.2.1', helo: 'client', authenticatedUser: null, clientCertificate: null },
        attempts: 0, nextAttemptAt: now, errors: [],
      }));
    }
    await Promise.all(commits);
    await spool.hold(ids[1]!, { at: new Date().toISOString(), by: null });
    await spool.updateState(ids[2]!, { attempts: 1, nextAttemptAt: '2030-01-01T00:00:00.000Z', recipients: [{ address: 'r2@example.org', lastError: '451 4.3.0 try later' }], errors: ['r2@example.org: 451 4.3.0 try later'] });
    spool.close();
    const config = join(dir, 'postern.yaml');
    writeFileSync(config, `dataDir: ${JSON.stringify(join(dir, 'data'))}\nlisteners:\n  - { name: in, listen: "127.0.0.1:0" }\n`);

    const trace = join(dir, 'trace');
    const listing = execFileSync('strace', ['-f', '-o', trace, '-e', 'trace=open,openat,stat,newfstatat,statx,access,faccessat,faccessat2', process.execPath, MAIN, 'queue', '-c', config],
      { encoding: 'utf8', timeout: 150_000, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NODE_NO_WARNINGS: '1' } });
    const lines = listing.split('\n');
    assert.equal(lines.filter((l) => /^[0-9a-z]{19}!? /.test(l)).length, MESSAGES);
    assert.match(listing, new RegExp(`^${ids[1]}! `, 'm'), 'the held one marked');
    assert.match(listing, new RegExp(`^${ids[2]}  .* attempts 1, next 2030-01-01T00:00:00\\.000Z\\n    r2@example\\.org\\n      \\(451 4\\.3\\.0 try later\\)$`, 'm'), 'its state applied');
    assert.match(listing, /^-- 3000 messages, 1 held \(!\)$/m);
    // Lookups of a message's own files (state, hold) that found nothing.
    const failed = readFileSync(trace, 'utf8').split('\n')
      .filter((l) => /\/queue\/[0-9a-z]+\.(state|held)"/.test(l) && /= -1 ENOENT/.test(l)).length;
    assert.ok(failed < MESSAGES / 10, `${failed} failed lookups for ${MESSAGES} messages`);

    const json = JSON.parse(execFileSync(process.execPath, [MAIN, 'queue', '--json', '-c', config], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, timeout: 60_000 })) as { messages: Array<{ id: string; held: boolean; attempts: number }>; unreadable: unknown[] };
    assert.equal(json.messages.length, MESSAGES);
    assert.deepEqual(json.unreadable, []);
    assert.equal(json.messages.find((m) => m.id === ids[1])!.held, true);
    assert.equal(json.messages.find((m) => m.id === ids[2])!.attempts, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// An input changed while the server starts (a deploy finishing its copy as the service starts; under `postern serve`,
// a worker replaced after a crash while an administrator edits a table): the first generation was built from the
// content before the change, and the reloader's record of what it was built from was taken afterwards, from the disk.
// The change was never applied (a later settled change found "nothing changed"), and `postern status` gave the new
// file's SHA-256 for a generation running the old one. The change is made here at a point of the start's own making:
// its log line about a stray script, written once the first generation is built.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { mailFromReply } from './helpers.ts';

const SCRIPT = `export default (ctx) => lookup('blocked', ctx.address.address) ? reject('blocked') : undefined;\n`;

test('a table renamed over while the first generation is being built: in force once the server runs, and its SHA-256 is the one in force', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-start-change-'));
  const table = join(dir, 'blocked');
  try {
    await mkdir(join(dir, 'scripts'));
    await writeFile(join(dir, 'scripts', 'mailfrom.ts'), SCRIPT);
    await writeFile(join(dir, 'scripts', 'rcptTo.ts'), SCRIPT); // not a hook's name: a warning once the generation is built
    await writeFile(table, 'old@example.test spam\n');
    await writeFile(join(dir, 'postern.yaml'), `dataDir: ${JSON.stringify(join(dir, 'data'))}\nscripts: ${JSON.stringify(join(dir, 'scripts'))}\n`
      + 'localDomains: [example.com]\ntables:\n  blocked: ./blocked\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\n');
    let changed = false;
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        if (!changed && chunk.toString().includes('rcptTo.ts: not a hook')) {
          changed = true;
          writeFileSync(`${table}.new`, 'new@example.test spam\n');
          renameSync(`${table}.new`, table); // complete when it appears: taken at once
        }
        cb();
      },
    });
    const s = await startPostern({ configPath: join(dir, 'postern.yaml'), logger: createLogger('debug', sink) });
    try {
      assert.ok(changed, 'the table was changed once the first generation was built');
      await s.reloader.whenIdle();
      const port = { port: (name: string) => s.addresses.get(name)!.port };
      assert.match(await mailFromReply(port, 'new@example.test'), /blocked/, 'the table on disk is in force');
      assert.doesNotMatch(await mailFromReply(port, 'old@example.test'), /blocked/);
      const sha = createHash('sha256').update(await readFile(table)).digest('hex');
      assert.equal(s.reloader.state().files[table], sha);
    } finally {
      await s.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

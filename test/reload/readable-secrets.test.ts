// Secret files every local user can read (a users file of password hashes, a private key) said by the running server,
// not only by `postern check`: at start and at a reload that makes one so, at error, naming the file and its mode (as ssh
// does); not again at every reload while it stays so (a table rewritten every minute must not make an error line a minute).
// A clone or a copy leaves them 0644; a server started without `postern check` (a container, `npm start`) said nothing.
// A single process and `postern serve` (said once by the supervisor, not once per worker).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { startCluster, TWO_WORKERS } from '../helpers/cluster.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';

type Line = Record<string, unknown>;
const readable = (logs: Line[], file: string, mode: string): Line[] =>
  logs.filter((l) => l.level === 50 && String(l.msg).includes(`${file}: password hashes every local user can read (mode ${mode})`));

test('a single process: a users file every local user can read is an error at start, not again at each reload of a storm, and again once readable anew', async () => {
  const users = `alice@example.com:${await hashPassword('alice-Secret-1')}\n`;
  const config = 'users: ./users\nlocalDomains: [example.com]\ntables: { blocked: ./blocked }\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0" }\n';
  const s = await startTestServer({ config, files: { users, blocked: 'a@example.net REJECT\n' }, fileMode: 0o644 });
  try {
    const file = join(s.dir, 'users');
    assert.equal(readable(s.logs, file, '0644').length, 1, 'said at start');
    // A table rewritten every minute (a generated blocklist) reloads every minute: not an error line each time.
    for (let i = 0; i < 3; i++) {
      await writeFile(join(s.dir, 'blocked'), `a@example.net REJECT\nb${i}@example.net REJECT\n`);
      await s.reloader.reload('SIGHUP');
    }
    assert.ok(s.logs.filter((l) => l.msg === 'reloaded').length >= 3);
    assert.equal(readable(s.logs, file, '0644').length, 1, 'not said again at each reload');
    await chmod(file, 0o640);
    await writeFile(join(s.dir, 'blocked'), 'a@example.net REJECT\n');
    await s.reloader.reload('SIGHUP');
    assert.equal(readable(s.logs, file, '0644').length, 1, 'not said once it is 0640');
    await chmod(file, 0o644);
    await writeFile(join(s.dir, 'blocked'), 'c@example.net REJECT\n');
    await s.reloader.reload('SIGHUP');
    assert.equal(readable(s.logs, file, '0644').length, 2, 'said again once every local user can read it again');
  } finally {
    await s.stop();
  }
});

test('postern serve: said at start by the supervisor (once, not once per worker), not again at a reload, again when another mode makes it readable', { timeout: 120_000 }, async () => {
  const users = `alice@example.com:${await hashPassword('alice-Secret-1')}\n`;
  const c = await startCluster({ config: `${TWO_WORKERS}users: ./users\n`, files: { users }, fileMode: 0o644 });
  try {
    const file = join(c.dir, 'users');
    await c.waitFor('said at start', () => readable(c.logs, file, '0644').length > 0);
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    assert.equal(readable(c.logs, file, '0644').length, 1, 'once');
    // The content the supervisor took as in force (it says the lines as it takes one): changed by the reload.
    const started = await c.waitFor('the content in force at start', async () => (await c.cluster()).reload.supervisor);
    await writeFile(file, users + `bob@example.com:${await hashPassword('bob-Secret-2')}\n`);
    await c.waitFor('the reload of the 0644 file in force', async () => {
      const { reload } = await c.cluster();
      return reload.converged && reload.supervisor && reload.supervisor !== started;
    });
    assert.equal(readable(c.logs, file, '0644').length, 1, 'not said again at the reload');
    await chmod(file, 0o666);
    await writeFile(file, users + `carol@example.com:${await hashPassword('carol-Secret-3')}\n`);
    await c.waitFor('said at the reload of the 0666 file', () => readable(c.logs, file, '0666').length === 1);
    assert.equal(readable(c.logs, file, '0644').length, 1, 'the 0644 line was not said again at the reload');
  } finally {
    await c.stop();
  }
});

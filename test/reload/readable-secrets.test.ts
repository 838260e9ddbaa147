// Secret files every local user can read (a users file of password hashes, a private key) said by the running server,
// not only by `postern check`: at start and at each reload, at error, naming the file and its mode (as ssh does).
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

test('a single process: a users file every local user can read is an error at start, and at each reload while it stays so', async () => {
  const users = `alice@example.com:${await hashPassword('alice-Secret-1')}\n`;
  const s = await startTestServer({ config: 'users: ./users\nlocalDomains: [example.com]\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0" }\n', files: { users }, fileMode: 0o644 });
  try {
    const file = join(s.dir, 'users');
    assert.equal(readable(s.logs, file, '0644').length, 1, 'said at start');
    await s.reloader.reload('SIGHUP');
    assert.equal(readable(s.logs, file, '0644').length, 2, 'said again at the reload');
    await chmod(file, 0o640);
    await s.reloader.reload('SIGHUP');
    assert.equal(readable(s.logs, file, '0644').length, 2, 'not said once it is 0640');
    assert.equal(s.logs.filter((l) => l.msg === 'reloaded').length, 2);
  } finally {
    await s.stop();
  }
});

test('postern serve: said at start by the supervisor (once, not once per worker), and again at a reload', { timeout: 120_000 }, async () => {
  const users = `alice@example.com:${await hashPassword('alice-Secret-1')}\n`;
  const c = await startCluster({ config: `${TWO_WORKERS}users: ./users\n`, files: { users }, fileMode: 0o644 });
  try {
    const file = join(c.dir, 'users');
    await c.waitFor('said at start', () => readable(c.logs, file, '0644').length > 0);
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    assert.equal(readable(c.logs, file, '0644').length, 1, 'once');
    await writeFile(file, users + `bob@example.com:${await hashPassword('bob-Secret-2')}\n`);
    await c.waitFor('said at the reload', () => readable(c.logs, file, '0644').length === 2);
    await chmod(file, 0o600);
    await writeFile(file, users);
    await c.waitFor('the reload of the 0600 file', async () => (await c.cluster()).reload.converged && readable(c.logs, file, '0644').length === 2);
    await chmod(file, 0o666);
    await writeFile(file, users + `bob@example.com:${await hashPassword('bob-Secret-2')}\n`);
    await c.waitFor('said at the reload of the 0666 file', () => readable(c.logs, file, '0666').length === 1);
    assert.equal(readable(c.logs, file, '0644').length, 2);
  } finally {
    await c.stop();
  }
});

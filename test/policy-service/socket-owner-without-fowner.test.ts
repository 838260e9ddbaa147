// A unix policy socket given to another owner (`socket.owner: postfix`) by a server that may chown (root, or a service
// user with CAP_CHOWN, as docs/postfix-policy.md says it needs) but has no CAP_FOWNER. Since the socket was bound
// under a private name and hard-linked into place, it was chowned before the link, and Linux's
// fs.protected_hardlinks (on by default) lets no one without CAP_FOWNER hard-link a file someone else owns that is
// not a regular file: the link failed with EPERM and the server did not start. Now it is linked while still its
// own, then given its owner and mode. A real `postern serve` under setpriv, a real policy client on the socket.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const protectedHardlinks = await readFile('/proc/sys/fs/protected_hardlinks', 'utf8').then((t) => t.trim() === '1', () => false);
const skip = process.getuid?.() !== 0 ? 'needs root (to chown the socket)' : !protectedHardlinks ? 'fs.protected_hardlinks is off' : false;

let c: ClusterProcess | undefined;
after(() => c?.stop());

test('socket.owner with CAP_CHOWN but not CAP_FOWNER: the socket is in place with its owner and mode, and answers', { skip, timeout: 180_000 }, async () => {
  c = await startCluster({
    config: `
workers: 1
localDomains: [example.org]
policyServices:
  - { name: postfix, listen: 'unix:./data/policy.sock', relayRule: true, socket: { owner: nobody, mode: '0660' } }
`,
    wrap: ['setpriv', '--bounding-set=-fowner'],
  });
  const path = join(c.dataDir, 'policy.sock');
  const st = await c.waitFor('the policy socket', async () => { const s = await lstat(path).catch(() => null); return s?.isSocket() ? s : null; });
  assert.equal(st.uid, 65534, 'owned by nobody');
  assert.equal(st.mode & 0o777, 0o660);
  assert.deepEqual((await readdir(c.dataDir)).filter((n) => n.startsWith('.policy.sock')), [], 'no private name left beside it');
  const client = await PolicyClient.connect({ path });
  assert.match(await client.ask(rcptRequest({ recipient: 'someone@example.org' })), /^action=(DUNNO|OK)$/);
  client.socket.destroy();
});

test('socket.owner without CAP_CHOWN: the start fails saying so, and leaves nothing at the path or beside it', { skip, timeout: 180_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-no-chown-'));
  try {
    const path = join(dir, 'policy.sock');
    await assert.rejects(startCluster({
      config: `
workers: 1
localDomains: [example.org]
policyServices:
  - { name: postfix, listen: ${JSON.stringify(`unix:${path}`)}, socket: { owner: nobody, mode: '0660' } }
`,
      wrap: ['setpriv', '--bounding-set=-chown'],
    }), /changing the socket's owner or group needs root or CAP_CHOWN/);
    assert.deepEqual(await readdir(dir), [], 'no socket linked into place, no private name');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

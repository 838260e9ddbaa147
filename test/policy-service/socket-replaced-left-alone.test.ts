// A policy service's unix socket replaced while the server runs by something that is not ours: another process's
// socket (a second policy daemon moved onto the path) or a file renamed over it. The supervisor leaves it alone while
// it runs (socket-removed.test.ts); its stop must leave it alone too. Closing a unix socket's server unlinks the path
// it was bound at, whatever is there by then: the stop deleted the other process's socket and the file.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { lstat, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';

let c: ClusterProcess | undefined;
let foreign: net.Server | undefined;
after(async () => { foreign?.close(); await c?.stop(); });

test('a policy socket replaced by another process\'s socket or a file: the stop deletes neither', { timeout: 180_000 }, async () => {
  c = await startCluster({
    config: `
workers: 1
localDomains: [example.org]
policyServices:
  - { name: taken, listen: 'unix:./data/taken.sock' }
  - { name: filed, listen: 'unix:./data/filed.sock' }
`,
  });
  const taken = join(c.dataDir, 'taken.sock');
  const filed = join(c.dataDir, 'filed.sock');
  await c.waitFor('both policy sockets', async () => (await lstat(taken).catch(() => null))?.isSocket() && (await lstat(filed).catch(() => null))?.isSocket());
  // Put in place by rename: no moment with the path empty, in which the supervisor would bind its own again.
  foreign = net.createServer((s) => s.end('foreign\n'));
  const foreignTmp = join(c.dataDir, 'foreign.tmp');
  foreign.listen(foreignTmp);
  await once(foreign, 'listening');
  await rename(foreignTmp, taken);
  await writeFile(join(c.dataDir, 'filed.tmp'), 'not a socket\n');
  await rename(join(c.dataDir, 'filed.tmp'), filed);
  for (const name of ['taken', 'filed']) {
    await c.waitFor(`the replaced ${name} socket said`, () => c!.logs.some((l) => l.policyService === name && /replaced .* left alone/.test(String(l.msg))), 60_000);
  }
  c.proc.kill('SIGTERM');
  await once(c.proc, 'exit');
  assert.ok((await lstat(taken).catch(() => null))?.isSocket(), 'the other process\'s socket is still at its path');
  const answer = await new Promise<string>((resolve, reject) => {
    const s = net.connect(taken);
    let got = '';
    s.on('data', (d) => { got += d.toString(); });
    s.on('end', () => resolve(got));
    s.on('error', reject);
  });
  assert.equal(answer, 'foreign\n');
  assert.equal(await readFile(filed, 'utf8'), 'not a socket\n', 'the file put in its place is still there');
  await rm(filed);
});

// `pki revoke` while the running server's last reload was refused (a script saved half-edited): the server keeps
// its generation in force, with the CRL from before, so the revoked laptop still logs in until the script is
// fixed, and the command said the revocation would apply at the reload. It now says the reload is refused, as
// `pins remove` does.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import { externalLogin, postern, startPkiServer } from './helpers.ts';
import { here, hereJson } from './in-process.ts';

let pki: TestPki;
before(async () => { pki = await makeTestPki(); });

test('revoked while a reload is refused: the command says the revocation waits for the fix; after it the certificate is refused', async () => {
  const { server, config } = await startPkiServer(pki);
  try {
    // Set up by the commands' functions in this process (the same code); the revoke and pins remove are the command line.
    const issued = await hereJson<{ files: { cert: string; key: string } }>(here.issue('alice@example.com', { device: 'laptop', config, json: true }));
    const laptop = { cert: await readFile(issued.files.cert, 'utf8'), key: await readFile(issued.files.key, 'utf8') };
    const external = (): Promise<number> => externalLogin(server, 'submission', pki, laptop);
    assert.equal(await external(), 235, 'logs in before (the test can fail)');
    assert.equal((await here.pinsAdd('bob@example.com', pki.clients.alice.cert, { listener: 'pinned', config })).code, 0);
    const script = join(server.dir, 'scripts', 'mailfrom.ts');
    await writeFile(script, 'export default (ctx) => {\n  return reject(;\n};\n');
    await until('the half-edited script refused', () => server.reloader.status.data.lastError !== null, { timeoutMs: 60_000 });
    const revoke = await postern(['pki', 'revoke', 'alice@example.com', '--all', '-c', config]);
    assert.equal(revoke.code, 0, revoke.stderr);
    assert.match(revoke.stderr, /^warning: the running server's last reload was refused \(.*mailfrom\.ts:2:.*\): it keeps its last good configuration, and with it the CRL and pins from before this revocation, until that is fixed \(postern status\)$/m);
    assert.equal(await external(), 235, 'what the warning says: the server in force still takes it');
    const unpin = await postern(['pins', 'remove', 'bob@example.com', '--listener', 'pinned', '-c', config]);
    assert.equal(unpin.code, 0, unpin.stderr);
    assert.match(unpin.stderr, /^warning: the running server's last reload was refused \(.*\): it keeps its last good configuration, and with it the pins from before this removal, until that is fixed/m);

    await writeFile(script, 'export default () => {};\n');
    await until('the certificate refused once the script is fixed', async () => (await external()) === 535, { timeoutMs: 60_000 });
  } finally {
    await server.stop();
  }
});

// A policy service with its own scripts folder: that folder is watched like a listener's, so an edit there
// changes the next answer on an open connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { until } from '../helpers/wait.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

test('an edit in a service\'s own scripts folder applies to the next request', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-policy-reload-'));
  await mkdir(join(dir, 'postfix-scripts'));
  await writeFile(join(dir, 'postfix-scripts', 'rcptto.ts'), `export default () => reject('version 1');`);
  await writeFile(join(dir, 'postern.yaml'), `
dataDir: ./data
policyServices: [{ name: postfix, listen: 127.0.0.1:0, scripts: ./postfix-scripts }]
`);
  const running = await startPostern({ configPath: join(dir, 'postern.yaml'), logger: createLogger('silent') });
  const c = await PolicyClient.connect({ port: Number(running.policyAddresses.get('postfix')!.split(':').pop()) });
  // One hook, in this order: t.after hooks run in the order they were added, and the folder removed while the server
  // still wrote into its data folder failed the test (ENOTEMPTY) once in a fresh-clone run.
  t.after(async () => {
    c.close();
    await running.close();
    await rm(dir, { recursive: true, force: true });
  });
  assert.equal(await c.ask(rcptRequest()), 'action=550 5.7.1 version 1');
  await writeFile(join(dir, 'postfix-scripts', 'rcptto.ts'), `export default () => reject('version 2');`);
  await until('the new script', async () => (await c.ask(rcptRequest())) === 'action=550 5.7.1 version 2');
});

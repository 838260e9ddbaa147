// A missing or mismatched outbound key is a configuration error: the server refuses to start on it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { makeTestPki } from '../helpers/pki.ts';

test('the server does not start with an unreadable or mismatched outbound client certificate', async () => {
  const pki = await makeTestPki();
  const dir = await mkdtemp(join(tmpdir(), 'postern-outbound-'));
  await copyFile(pki.clients.alice.cert, join(dir, 'laptop.crt'));
  await copyFile(pki.clients.bob.key, join(dir, 'laptop.key'));
  const config = (key: string): string => `
dataDir: ${dir}/data
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: 127.0.0.1, port: 2525 } }
  clientCertificates: { laptop: { cert: ./laptop.crt, key: ${key} } }
`;
  const start = (key: string) => startPostern({ configText: config(key), baseDir: dir, watch: false, logger: createLogger('silent') });
  // Named at the key's line of the configuration (here inline text: `(inline)`), then the file.
  await assert.rejects(start('./missing.key'), /^GenerationError: \(inline\):6:60: delivery\.clientCertificates\.laptop\.key: \S*missing\.key: cannot read/);
  await assert.rejects(start('./laptop.key'), /^GenerationError: \(inline\):6:60: delivery\.clientCertificates\.laptop\.key: \S*laptop\.key: private key does not match certificate/);
  await copyFile(pki.clients.alice.key, join(dir, 'laptop.key'));
  const running = await start('./laptop.key');
  await running.close();
});

// The large optional packages are loaded only when the configuration uses them: a server without
// `store.redis` or `log.format: pretty` never holds the Redis client or pino-pretty (together hundreds of
// modules and megabytes of heap that would raise GC cost per message). DKIM signing needs no package at all
// (node:crypto): mailauth (with joi and undici) is never loaded, even by a signature.
// Each case runs in a fresh Node process that records every module it resolves.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const OPTIONAL = ['redis', '@redis/client', 'mailauth', 'undici', 'joi', 'pino-pretty'];
const root = new URL('../../', import.meta.url).href;

/** Runs `body` (ESM, top-level await) in a new process; → the npm packages it loaded. */
async function packagesLoadedBy(body: string): Promise<Set<string>> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-optional-'));
  try {
    const script = join(dir, 'child.mjs');
    await writeFile(script, `
import { registerHooks } from 'node:module';
const loaded = new Set();
registerHooks({ resolve(spec, ctx, next) { const r = next(spec, ctx); loaded.add(r.url); return r; } });
const root = ${JSON.stringify(root)};
const dir = ${JSON.stringify(dir)};
${body}
const names = [...loaded].map((u) => u.match(/node_modules\\/((?:@[^/]+\\/)?[^/]+)/)?.[1]).filter(Boolean);
process.stdout.write(JSON.stringify([...new Set(names)]));
process.exit(0);
`);
    const { stdout } = await promisify(execFile)(process.execPath, [script], { cwd: dir, timeout: 60_000 });
    return new Set(JSON.parse(stdout) as string[]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const startAndStop = (yaml: string): string => `
const { startTestServer } = await import(root + 'test/helpers/postern.ts');
const s = await startTestServer({ config: ${JSON.stringify(yaml)} });
await s.stop();`;

const LISTENER = 'listeners: [{ name: mx, listen: "127.0.0.1:0" }]\n';

test('a server without store.redis, DKIM keys or pretty logs loads none of them', async () => {
  const loaded = await packagesLoadedBy(startAndStop(LISTENER));
  assert.ok(loaded.has('smtp-server') && loaded.has('pino'), 'the recording sees the packages the server does use');
  assert.deepEqual(OPTIONAL.filter((p) => loaded.has(p)), []);
});

test('store.redis loads the Redis client at start (and only it)', async () => {
  // Start does not wait for the connection: an unreachable address is enough to load and make the client.
  const loaded = await packagesLoadedBy(startAndStop(`${LISTENER}store: { redis: { url: "redis://127.0.0.1:1" } }\n`));
  assert.ok(loaded.has('redis') && loaded.has('@redis/client'));
  assert.deepEqual(OPTIONAL.filter((p) => loaded.has(p) && !p.includes('redis')), []);
});

test('log.format pretty loads pino-pretty', async () => {
  const loaded = await packagesLoadedBy(`
const { createLogger } = await import(root + 'engine/logging/logger.ts');
const { PassThrough } = await import('node:stream');
createLogger('info', new PassThrough(), 'pretty').info('hello');`);
  assert.ok(loaded.has('pino-pretty'));
});

test('a DKIM signature loads no optional package (mailauth, joi, undici)', async () => {
  const loaded = await packagesLoadedBy(`
const { generateKeyPairSync } = await import('node:crypto');
const { writeFileSync } = await import('node:fs');
const { loadDkimKey, signMessage } = await import(root + 'engine/delivery/dkim.ts');
const pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' });
writeFileSync(dir + '/k.pem', pem);
const delivery = { dkim: { main: { domain: 'example.test', selector: 's1', privateKey: dir + '/k.pem', senderDomains: [] } } };
const key = await loadDkimKey(delivery, 'main');
const signed = await signMessage(Buffer.from('From: a@example.test\\r\\nSubject: hi\\r\\n\\r\\nbody\\r\\n'), [key]);
if (!signed.toString().startsWith('DKIM-Signature:')) throw new Error('not signed');`);
  assert.deepEqual(OPTIONAL.filter((p) => loaded.has(p)), []);
});

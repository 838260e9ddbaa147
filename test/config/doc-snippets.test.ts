// Every postern.yaml snippet in the documentation (README.md, docs/*.md, examples/*/README.md) passes
// `postern check`'s build (buildGeneration, strict, in this process: the check command's own behaviour is
// test/cli/cli.test.ts's), as an administrator pasting it would find. A snippet is often a part of a configuration
// (a `delivery:` section, one listener's keys): what it leaves out is filled in with the least there is (a
// plaintext listener, a listen address), its /etc/postern paths are moved into a scratch folder, and every
// file and folder it names is made there with content of its kind (certificates from the test PKI). The
// snippet's own keys and values are checked as written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parse, stringify } from 'yaml';
import { parseConfig } from '../../engine/config/load-config.ts';
import { DEFAULT_CONFIG_YAML } from '../../engine/config/default-config.ts';
import { pathKeys, valuesAt } from '../helpers/config-paths.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { buildGeneration, GenerationError } from '../../engine/generation/build-generation.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const scratch = useScratchDir('postern-doc-snippets-');

interface Snippet { where: string; text: string }

/** The ```yaml blocks that are postern.yaml: not the Prometheus rules, not an indented part of a list item. */
function snippets(): Snippet[] {
  const files = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`),
    ...readdirSync(join(ROOT, 'examples')).map((d) => `examples/${d}/README.md`).filter((f) => existsSync(join(ROOT, f)))];
  const out: Snippet[] = [];
  for (const file of files) {
    const lines = readFileSync(join(ROOT, file), 'utf8').split('\n');
    for (let i = 0; i < lines.length; i++) {
      if (lines[i] !== '```yaml') continue;
      const end = lines.indexOf('```', i + 1);
      const text = lines.slice(i + 1, end).join('\n');
      i = end;
      if (/^\s/.test(text) || /^groups:/m.test(text)) continue;
      out.push({ where: `${file}:${i + 1 - text.split('\n').length}`, text });
    }
  }
  return out;
}

type Listener = Record<string, unknown> & { tls?: Record<string, unknown> };

/** The snippet made a whole configuration in `dir`. */
function completed(text: string, dir: string): string {
  const c = (parse(text.replaceAll('/etc/postern', join(dir, 'etc')).replaceAll('/var/lib/postern', join(dir, 'var'))) ?? {}) as Record<string, unknown>;
  c.dataDir ??= './data';
  if (!c.listeners && !c.policyServices) c.listeners = [{ name: 'submission' }];
  for (const l of (c.listeners ?? []) as Listener[]) {
    l.listen ??= '127.0.0.1:0';
    // A listener's part that asks for certificates (`tls: { clientCertificates: … }` or `certificateIdentity`) without its TLS basics.
    if ((l.tls && !l.tls.mode) || (!l.tls && l.certificateIdentity)) l.tls = { mode: 'starttls', ...l.tls };
    if (l.tls && l.tls.mode !== 'none') l.tls = { cert: 'server.crt', key: 'server.key', ...l.tls };
  }
  return stringify(c);
}

/** Makes every file and folder the configuration names, as its key expects. */
async function makeFiles(config: unknown): Promise<void> {
  const pki = await makeTestPki();
  const [serverCert, serverKey, clientCert, clientKey] = await Promise.all([pki.server.cert, pki.server.key, pki.clients.alice.cert, pki.clients.alice.key].map((f) => readFile(f, 'utf8')));
  const dkimKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const folder = new Set(['dataDir', 'scripts', 'listeners[].scripts', 'listeners[].shadowScripts', 'policyServices[].scripts', 'pki.dir']);
  const content = (key: string, file: string, pairedWith?: string): string => {
    const both = pairedWith === file; // one file holding the key and the certificate
    switch (key) {
      case 'users': case 'tables.<name>': return '';
      case 'tables.<name>.file': return /\.(ya?ml|json)$/.test(file) ? '{}\n' : '';
      case 'listeners[].tls.cert': case 'listeners[].tls.key': return both ? serverKey + serverCert : key.endsWith('cert') ? serverCert : serverKey;
      case 'delivery.clientCertificates.<name>.cert': case 'delivery.clientCertificates.<name>.key': return both ? clientKey + clientCert : key.endsWith('cert') ? clientCert : clientKey;
      case 'listeners[].tls.caFiles[]': case 'delivery.caFiles.<name>': return readFileSync(pki.ca.cert, 'utf8');
      case 'listeners[].tls.crlFiles[]': return readFileSync(pki.crl, 'utf8');
      case 'delivery.dkim.<name>.privateKey': return dkimKey;
      default: throw new Error(`no content for a file named by ${key}: add it here`);
    }
  };
  const c = config as { listeners: Array<{ tls: { cert?: string; key?: string } }>; delivery: { clientCertificates: Record<string, { cert: string; key: string }> } };
  const pairs = new Map<string, string>([
    ...c.listeners.flatMap((l) => (l.tls.cert && l.tls.key ? [[l.tls.cert, l.tls.key] as [string, string], [l.tls.key, l.tls.cert] as [string, string]] : [])),
    ...Object.values(c.delivery.clientCertificates).flatMap((cc) => [[cc.cert, cc.key] as [string, string], [cc.key, cc.cert] as [string, string]]),
  ]);
  for (const key of pathKeys()) {
    for (const file of valuesAt(config, key)) {
      if (existsSync(file)) continue;
      if (folder.has(key)) { await mkdir(file, { recursive: true }); continue; }
      await mkdir(dirname(file), { recursive: true });
      await writeFile(file, content(key, file, pairs.get(file)), { mode: 0o600 });
    }
  }
}

test('every postern.yaml snippet of the documentation passes postern check', { timeout: 600_000 }, async () => {
  const all = snippets();
  assert.ok(all.length >= 15, `found ${all.length} snippets`);
  const failures: string[] = [];
  for (const [i, s] of all.entries()) {
    const dir = join(scratch.path, String(i));
    await mkdir(dir, { recursive: true });
    const file = join(dir, 'postern.yaml');
    await writeFile(file, completed(s.text, dir));
    try {
      const loaded = parseConfig(await readFile(file, 'utf8'), file, dir);
      await makeFiles(loaded.config);
      const built = await buildGeneration(loaded, { logger: createLogger('silent'), strict: true });
      await built.generation.dispose();
    } catch (err) {
      failures.push(`${s.where}:\n${err instanceof GenerationError ? err.lines.join('\n') : (err as Error).message}`);
    }
  }
  assert.deepEqual(failures, []);
});

test("docs/configuration.md shows the embedded default that `npm start` runs (engine/config/default-config.ts)", async () => {
  const doc = await readFile(join(ROOT, 'docs', 'configuration.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## The embedded default'));
  const shown = /```yaml\n([^]*?)\n```/.exec(section)?.[1];
  assert.ok(shown, 'the yaml block of "The embedded default"');
  assert.deepEqual(parse(shown), parse(DEFAULT_CONFIG_YAML));
});

// The commands `npm start` prints on a development start (engine/cli/quick-start.ts), run as printed against the
// embedded default (its ports made free ones, its PKI the development one, the repository's default scripts):
// swaks over STARTTLS, openssl s_client with AUTH EXTERNAL, curl over implicit TLS each get their mail queued.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DEFAULT_CONFIG_YAML, DEMO_USER } from '../../engine/config/default-config.ts';
import { writeDevelopmentPki } from '../../engine/certificates/dev-pki.ts';
import { quickStartText } from '../../engine/cli/quick-start.ts';
import { startCluster } from '../helpers/cluster.ts';
import { needs } from '../helpers/example.ts';

const SCRIPTS = new URL('../../scripts/', import.meta.url).pathname;

/** The printed commands: each block's lines after its title, continuation backslashes joined. */
function commands(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const block of text.split('\n\n')) {
    const [title, ...lines] = block.split('\n').filter(Boolean);
    if (title && lines.length && /:$/.test(title)) out.set(title, lines.join('\n').replace(/\\\n\s*/g, ' ').trim());
  }
  return out;
}

test('the commands a development start prints work as printed against the embedded default', { ...needs('swaks', 'curl', 'openssl'), timeout: 120_000 }, async () => {
  const pkiRoot = await mkdtemp(join(tmpdir(), 'postern-quick-start-'));
  const pki = await writeDevelopmentPki(join(pkiRoot, 'pki'), { hostname: 'localhost', demoUser: DEMO_USER });
  const config = DEFAULT_CONFIG_YAML
    .replace(/^(dataDir|scripts):.*\n/gm, '') // the test's own folders (startCluster)
    .replaceAll('./data/pki/', `${join(pkiRoot, 'pki')}/`)
    .replace('127.0.0.1:2525', '127.0.0.1:{PORT:inbound}').replace('127.0.0.1:2587', '127.0.0.1:{PORT:submission}').replace('127.0.0.1:2465', '127.0.0.1:{PORT:submissions}');
  const scripts: Record<string, string> = {};
  for (const name of (await readdir(SCRIPTS)).filter((n) => n.endsWith('.ts') && !n.endsWith('.d.ts'))) scripts[name] = await readFile(join(SCRIPTS, name), 'utf8');
  const c = await startCluster({ config, scripts });
  try {
    const listeners = new Map(['inbound', 'submission', 'submissions'].map((n) => [n, `127.0.0.1:${c.port(n)}`]));
    const printed = commands(quickStartText(pki, listeners));
    const run = (line: string, input?: string): Promise<{ stdout: string; stderr: string }> => new Promise((resolve, reject) => {
      const child = execFile('bash', ['-c', line], { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${line}\n${err.message}\n${stdout}${stderr}`)) : resolve({ stdout, stderr })));
      child.stdin!.end(input ?? '');
    });

    const swaks = printed.get('Send with the certificate over STARTTLS (swaks):');
    assert.ok(swaks, 'the swaks command is printed');
    assert.match((await run(swaks)).stdout, /<~? +250 2\.0\.0 Ok: queued as /);

    const openssl = [...printed].find(([title]) => title.startsWith('AUTH EXTERNAL by hand'))?.[1];
    assert.ok(openssl, 'the openssl command is printed');
    const typed = 'EHLO me\nAUTH EXTERNAL =\nMAIL FROM:<demo@example.test>\nRCPT TO:<someone@example.test>\nDATA\nFrom: demo@example.test\nSubject: hi\n\nhello\n.\nQUIT\n';
    const s = await run(openssl, typed);
    assert.match(s.stdout, /^235 /m, s.stdout);
    assert.match(s.stdout, /^250 2\.0\.0 Ok: queued as /m, s.stdout);

    const curl = printed.get('AUTH EXTERNAL with curl over implicit TLS:');
    assert.ok(curl, 'the curl command is printed');
    await run(curl); // curl exits non-zero on any refusal (-sS)
  } finally {
    await c.stop();
    await rm(pkiRoot, { recursive: true, force: true });
  }
});

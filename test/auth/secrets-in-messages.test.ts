// A table, users file or configuration pointed by mistake at a private key: `postern check` (the real
// CLI, a child process) and the server log name the file and quote nothing of the key.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';

const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;

let root: string;
/** A fresh RSA key as PKCS#8 PEM, and its base64 body lines. */
const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
const body = pem.split('\n').filter((l) => l && !l.startsWith('-----'));

before(async () => { root = await mkdtemp(join(tmpdir(), 'postern-secrets-')); });
after(() => rm(root, { recursive: true, force: true }));

function check(config: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, 'check', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { output += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { output += d; });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

/** No piece of the key (any 8 characters of a body line) appears in `text`. */
function assertNoKeyText(text: string): void {
  for (const line of body) {
    for (let i = 0; i + 8 <= line.length; i += 4) assert.ok(!text.includes(line.slice(i, i + 8)), `key text ${line.slice(i, i + 8)} in:\n${text}`);
  }
}

async function folder(name: string, files: Record<string, string>): Promise<string> {
  const dir = join(root, name);
  await mkdir(join(dir, 'scripts'), { recursive: true });
  for (const [file, text] of Object.entries(files)) await writeFile(join(dir, file), text);
  return dir;
}

const LISTENER = 'listeners:\n  - name: a\n    listen: 127.0.0.1:0\n';

test('postern check: a table that is a PEM private key → exit 1, the message names the file and quotes none of the key', async () => {
  const dir = await folder('pem-table', { 'postern.yaml': `${LISTENER}tables:\n  senders: ./server.key\n`, 'server.key': pem });
  const r = await check(join(dir, 'postern.yaml'));
  assert.equal(r.code, 1);
  assert.equal(r.output, `${join(dir, 'server.key')}: table "senders": holds a PEM private key ("PRIVATE KEY" block), not a table: refused, nothing of it shown (is the path right?) (named by tables.senders at ${join(dir, 'postern.yaml')}:5:12)\n`);
  assertNoKeyText(r.output);
});

test('postern check: key text without PEM armour in a postfix, JSON or YAML table, and a key duplicated as a table key → file and line, no key text', async () => {
  const bare = `${body.join('\n')}\n`;
  const cases: Array<[string, string, RegExp]> = [
    ['./bare', bare, /bare:1: expected "key value", got \(a line that looks like key material: not shown\)\ \(named by tables\.t(\.file)? at [^\n]*postern\.yaml:5:\d+\)\n$/],
    ['{ file: ./bare, format: json }', bare, /bare: not valid JSON: unexpected token\ \(named by tables\.t(\.file)? at [^\n]*postern\.yaml:5:\d+\)\n$/],
    ['{ file: ./bare, format: yaml }', bare, /bare:1: expected a mapping of keys to values\ \(named by tables\.t(\.file)? at [^\n]*postern\.yaml:5:\d+\)\n$/],
    ['./dup', `${body[0]} a\n${body[0]} b\n`, /dup:2: duplicate key \(a value that looks like key material: not shown\)\ \(named by tables\.t(\.file)? at [^\n]*postern\.yaml:5:\d+\)\n$/],
  ];
  for (const [i, [table, text, expected]] of cases.entries()) {
    const dir = await folder(`bare-${i}`, { 'postern.yaml': `${LISTENER}tables:\n  t: ${table}\n`, bare: text, dup: text });
    const r = await check(join(dir, 'postern.yaml'));
    assert.equal(r.code, 1, table);
    assert.match(r.output, expected, table);
    assertNoKeyText(r.output);
  }
});

test('postern check: the users file or the configuration itself a private key → named, not quoted', async () => {
  const dir = await folder('users', { 'postern.yaml': `${LISTENER}users: ./users\n`, users: pem, 'key.yaml': pem });
  const users = await check(join(dir, 'postern.yaml'));
  assert.equal(users.code, 1);
  assert.equal(users.output, `${join(dir, 'users')}: holds a PEM private key ("PRIVATE KEY" block), not a users file: refused, nothing of it shown (is the path right?) (named by users at ${join(dir, 'postern.yaml')}:4:8)\n`);
  const config = await check(join(dir, 'key.yaml'));
  assert.equal(config.code, 1);
  assert.equal(config.output, `${join(dir, 'key.yaml')}: holds a PEM private key ("PRIVATE KEY" block), not a configuration: refused, nothing of it shown (is the path right?)\n`);
  // Key text pasted as a configuration key: reported at its line, the key itself hidden.
  await writeFile(join(dir, 'pasted.yaml'), `${LISTENER}    ${body[1]}: 1\n`);
  const pasted = await check(join(dir, 'pasted.yaml'));
  assert.equal(pasted.code, 1);
  assert.equal(pasted.output, `${join(dir, 'pasted.yaml')}:4:5: listeners[0].[…]: Unrecognized key: "[…]"\n`);
  for (const r of [users, config, pasted]) assertNoKeyText(r.output);
});

test('a reload that finds a table replaced by a private key is refused, and the log names the file only', async () => {
  const s = await startTestServer({ config: `tables:\n  senders: ./senders\n${LISTENER}`, files: { senders: 'a@example.com REJECT\n' }, settleMs: 20 });
  try {
    const refused = new Promise<void>((resolve) => { s.reloader.onReload((o) => { if (!o.ok) resolve(); }); });
    await writeFile(join(s.dir, 'senders'), pem);
    await refused;
    const logged = JSON.stringify(s.logs);
    assert.match(logged, /senders: table \\"senders\\": holds a PEM private key/);
    assertNoKeyText(logged);
  } finally {
    await s.stop();
  }
});

// A start, a reload and `postern check` build a configuration with the same code (buildGeneration): the same
// broken inputs give the same problems, all at once and in the same words, from `postern check` (a real CLI
// child process), from a reload of a running server and from a start; and what check accepts, a reload
// accepts. The one deliberate difference: an expired outbound client certificate fails the check only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { startPostern, type RunningPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { ConfigError } from '../../engine/config/config-error.ts';


const check = (config: string): Promise<CliResult> => runCli(['check', '--config', config]);

/** `check`'s problems: stderr lines that are not warnings. */
const problems = (stderr: string): string[] => stderr.split('\n').filter((l) => l && !l.startsWith('warning: '));

let pki: TestPki;
let dir: string;
before(async () => {
  pki = await makeTestPki();
  dir = await mkdtemp(join(tmpdir(), 'postern-one-build-'));
});
after(() => rm(dir, { recursive: true, force: true }));

const MX = `  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: tls/server.crt, key: tls/server.key }
`;
const EXTRA = `  - name: extra
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: tls/extra.crt, key: tls/extra.key }
`;

function configText(listeners: string): string {
  return `dataDir: ./data
scripts: ./scripts
users: ./users
tables:
  senders: ./senders
listeners:
${listeners}delivery:
  clientCertificates:
    laptop: { cert: out/laptop.crt, key: out/laptop.key }
`;
}

async function goodFiles(): Promise<Record<string, string>> {
  return {
    'tls/server.crt': await readFile(pki.server.cert, 'utf8'),
    'tls/server.key': await readFile(pki.server.key, 'utf8'),
    'out/laptop.crt': await readFile(pki.clients.ed25519.cert, 'utf8'),
    'out/laptop.key': await readFile(pki.clients.ed25519.key, 'utf8'),
    senders: 'spammer@bad.example REJECT\n',
    users: `alice@example.com:${await hashPassword('alice')}\n`,
    'scripts/mailfrom.ts': `export default (ctx) => { if (lookup('senders', ctx.address.address) === 'REJECT') return reject('blocked'); };\n`,
    'postern.yaml': configText(MX),
  };
}

async function write(files: Record<string, string>): Promise<void> {
  for (const [name, text] of Object.entries(files)) {
    await mkdir(join(dir, name, '..'), { recursive: true });
    await writeFile(join(dir, name), text, { mode: text.includes('PRIVATE KEY-----') ? 0o600 : name === 'users' ? 0o640 : 0o644 }); // keys and hashes kept as an administrator keeps them (check warns otherwise)
  }
}

/** Five problems in five kinds of input, plus a new listener whose certificate is missing. */
async function breakEverything(): Promise<void> {
  await write({
    senders: '# a table\n  continued\n', // a table with a syntax error
    'scripts/mailfrom.ts': 'export default (ctx) => { return ctx. };\n', // a script that does not compile
    'out/laptop.key': await readFile(pki.clients.bob.key, 'utf8'), // an outbound key that does not match its certificate
    'postern.yaml': configText(MX + EXTRA), // a new listener: its files are read too, though it needs a restart
  });
  await unlink(join(dir, 'tls/server.key')); // a running listener's key is gone
}

const expectedProblems = (): string[] => [
  `${join(dir, 'senders')}:2: line starts with whitespace but there is no entry to continue (named by tables.senders at ${join(dir, 'postern.yaml')}:5:12)`,
  `${join(dir, 'scripts', 'mailfrom.ts')}:1:39: SyntaxError: Expected ident`,
  // A TLS file's problem names the configuration's line (and key) that points at the file, then the file.
  `${join(dir, 'postern.yaml')}:9:55: listeners[0].tls.key: ${join(dir, 'tls', 'server.key')}: cannot read: ENOENT`,
  `${join(dir, 'postern.yaml')}:12:34: listeners[1].tls.cert: ${join(dir, 'tls', 'extra.crt')}: cannot read: ENOENT`,
  `${join(dir, 'postern.yaml')}:15:42: delivery.clientCertificates.laptop.key: ${join(dir, 'out', 'laptop.key')}: private key does not match certificate ${join(dir, 'out', 'laptop.crt')}`,
];

function start(logs: string[] = []): Promise<RunningPostern> {
  const sink = new Writable({ write(chunk: Buffer, _enc, cb) { logs.push(...chunk.toString().split('\n').filter(Boolean)); cb(); } });
  return startPostern({ configPath: join(dir, 'postern.yaml'), logger: createLogger('info', sink), settleMs: 50 });
}

test('the same broken inputs: the same problems from postern check, a reload and a start; what check accepts a reload accepts', async () => {
  const config = join(dir, 'postern.yaml');
  await write(await goodFiles());
  const ok = await check(config);
  assert.equal(ok.stderr, '');
  assert.equal(ok.code, 0);

  const logs: string[] = [];
  const server = await start(logs);
  let stopped = false;
  try {
    const first = server.reloader.status.data.generation;

    // Broken: the running server refuses the reload, listing every problem, as check does.
    await breakEverything();
    await server.reloader.whenIdle();
    const refused = server.reloader.status.data.lastError;
    assert.deepEqual(refused, expectedProblems());
    assert.equal(server.reloader.status.data.generation, first, 'the running generation stays');
    const checked = await check(config);
    assert.equal(checked.code, 1);
    assert.equal(checked.stdout, '');
    assert.deepEqual(problems(checked.stderr), refused);

    // Repaired (and the new listener's files written): check accepts it, and so does the reload.
    await write({ ...await goodFiles(), 'tls/extra.crt': await readFile(pki.server.cert, 'utf8'), 'tls/extra.key': await readFile(pki.server.key, 'utf8'), 'postern.yaml': configText(MX + EXTRA) });
    const repaired = await check(config);
    assert.equal(repaired.stderr, '');
    assert.equal(repaired.code, 0);
    await server.reloader.whenIdle();
    assert.equal(server.reloader.status.data.lastError, null);
    assert.ok(server.reloader.status.data.generation > first, 'a new generation is in force');
    assert.deepEqual(server.reloader.status.data.pendingRestart, ['new listener extra (127.0.0.1:0)']);

    // The one difference, by the builder's `strict` option: an expired outbound certificate fails the
    // check; a reload takes it and logs it (delivery presents it and the next hop decides).
    const swapped = server.reloader.status.data.generation;
    await write({ 'out/laptop.crt': await readFile(pki.clients.expired.cert, 'utf8'), 'out/laptop.key': await readFile(pki.clients.expired.key, 'utf8') });
    const expired = await check(config);
    assert.equal(expired.code, 1);
    assert.match(expired.stderr, /postern\.yaml:\d+:\d+: delivery\.clientCertificates\.laptop\.cert: \S*out\/laptop\.crt: certificate "CN=old-laptop[^"]*" expired on /);
    await server.reloader.whenIdle();
    assert.equal(server.reloader.status.data.lastError, null);
    assert.ok(server.reloader.status.data.generation > swapped);
    assert.ok(logs.some((l) => /postern\.yaml:\d+:\d+: delivery\.clientCertificates\.laptop\.cert: \S*laptop\.crt: certificate .* expired on /.test(l) && /"level":40/.test(l)), 'logged as a warning');

    // A start with the broken inputs refuses with the same lines.
    await server.close();
    stopped = true;
    await write({ 'out/laptop.crt': await readFile(pki.clients.ed25519.cert, 'utf8') });
    await rm(join(dir, 'tls', 'extra.crt'));
    await breakEverything();
    await assert.rejects(start(), (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.deepEqual(err.message.split('\n'), expectedProblems());
      return true;
    });
  } finally {
    if (!stopped) await server.close();
  }
});

// The command line as an administrator runs it (node engine/cli/main.ts …): hash-password reads stdin and
// prints a hash the server accepts; check validates offline and reports problems as file:line[:col], and
// reads the outbound client certificates and CA files named under delivery.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { needs, python } from '../helpers/example.ts';
import { until } from '../helpers/wait.ts';
import { hashPassword, verifyPassword } from '../../engine/auth/password-hash.ts';
import { loadUsersFile } from '../../engine/auth/users-file.ts';
import { issueClientCertificate } from '../../engine/certificates/index.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { checkCommand } from '../../engine/cli/check.ts';
import { pkiInitCommand } from '../../engine/cli/pki.ts';

const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;

type Result = CliResult;

/** Runs `node engine/cli/main.ts …` from `cwd` (default: a directory unrelated to the configuration). */
function cli(args: string[], input: string | null, cwd = tmpdir()): Promise<Result> {
  return runCli(args, { input: input ?? undefined, cwd });
}

/**
 * A case's further runs of `check` (and the `pki init` that only sets one up): the command's function in this
 * process. Each case's first `check` stays the real command line; a process per variant proves nothing more.
 */
const checkHere = (config: string): Promise<Result> => runInProcess(() => checkCommand({ config }));

let pki: TestPki;
let root: string;
before(async () => {
  pki = await makeTestPki();
  root = await mkdtemp(join(tmpdir(), 'postern-cli-'));
});
after(() => rm(root, { recursive: true, force: true }));

/** argon2id PHC string: version 19, the library's parameters, 16-byte salt, 32-byte hash (unpadded base64). */
const ARGON2ID = /^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/;

test('hash-password: the password on stdin (one trailing newline dropped) → an argon2id hash that verifies', async () => {
  const r = await cli(['hash-password'], 's3cret pass\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.ok(r.stdout.endsWith('\n') && !r.stdout.slice(0, -1).includes('\n'), JSON.stringify(r.stdout));
  const hash = r.stdout.slice(0, -1);
  assert.match(hash, ARGON2ID);
  assert.equal(await verifyPassword(hash, 's3cret pass'), true);
  assert.equal(await verifyPassword(hash, 's3cret pass\n'), false, 'the newline is not part of the password');
  assert.equal(await verifyPassword(hash, 's3cret'), false);
  // The users file accepts it.
  const users = join(root, 'users');
  await writeFile(users, `Alice@Example.com: ${hash}\n`);
  assert.deepEqual([...await loadUsersFile(users)], [['alice@example.com', hash]]);

  // A random salt: the same password hashes differently each time.
  const again = await cli(['hash-password'], 's3cret pass\n');
  assert.equal(again.code, 0);
  assert.notEqual(again.stdout, r.stdout);
  assert.equal(await verifyPassword(again.stdout.trim(), 's3cret pass'), true);
});

test('hash-password at a terminal (a real pty): the password typed is not echoed, Backspace takes a character back, Enter ends it', needs('python3'), async () => {
  // The password is typed as soon as the prompt shows, as a fast typist (or a paste) does.
  const { out, code } = await python<{ out: string; code: number }>(`
import os, pty, json
pid, fd = pty.fork()
if pid == 0:
    os.environ['NODE_NO_WARNINGS'] = '1'
    os.execv(${JSON.stringify(process.execPath)}, [${JSON.stringify(process.execPath)}, ${JSON.stringify(MAIN)}, 'hash-password'])
out = b''
while b'Password' not in out:
    out += os.read(fd, 1024)
os.write(fd, b'Tty-Secret-9\\x7fX\\r\\x04')  # Ctrl-D after it: what ended the input before
while True:
    try:
        d = os.read(fd, 1024)
    except OSError:
        break
    if not d:
        break
    out += d
print(json.dumps({'out': out.decode(), 'code': os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}))
`);
  assert.equal(code, 0, out);
  assert.ok(!out.includes('Tty-Secret'), `echoed:\n${out}`);
  const hash = /\$argon2id\S+/.exec(out)![0];
  assert.equal(await verifyPassword(hash, 'Tty-Secret-X'), true, 'Backspace took the 9 back');
});

test('hash-password drops exactly one trailing newline (LF or CRLF), nothing else', async () => {
  const cases: Array<[string, string, string]> = [
    ['pw\r\n', 'pw', 'pw\r'], // CRLF as one newline
    ['pw\n\n', 'pw\n', 'pw'], // only the last newline
    ['  spaced  ', '  spaced  ', 'spaced'], // no newline: taken as is, spaces kept
  ];
  for (const [input, password, not] of cases) {
    const r = await cli(['hash-password'], input);
    assert.equal(r.code, 0, r.stderr);
    const hash = r.stdout.trim();
    assert.match(hash, ARGON2ID);
    assert.equal(await verifyPassword(hash, password), true, JSON.stringify(input));
    assert.equal(await verifyPassword(hash, not), false, JSON.stringify(input));
  }
});

test('hash-password refuses an empty password: exit 1, a message on stderr, nothing on stdout', async () => {
  for (const input of ['', '\n', '\r\n']) {
    const r = await cli(['hash-password'], input);
    assert.equal(r.code, 1, JSON.stringify(input));
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'postern: refusing to hash an empty password\n');
  }
});

/** A configuration folder: postern.yaml with two listeners, TLS files, a users file, a table and scripts. */
async function configFolder(name: string, files: Record<string, string> = {}): Promise<{ dir: string; config: string }> {
  const dir = join(root, name);
  await mkdir(join(dir, 'scripts'), { recursive: true });
  await mkdir(join(dir, 'tls'));
  for (const [to, from] of Object.entries({ 'server.crt': pki.server.cert, 'server.key': pki.server.key, 'ca.crt': pki.ca.cert, 'ca.crl': pki.crl })) {
    await cp(from, join(dir, 'tls', to));
  }
  const defaults: Record<string, string> = {
    users: `alice@example.com:${await hashPassword('alice')}\n`,
    senders: '# blocked senders\nspammer@bad.example   REJECT\n\nfriend@good.example OK\n',
    recipients: 'alice@example.com\n',
    'scripts/mailfrom.ts': `import type { MailFromContext, Verdict } from 'postern';
export default function mailfrom(ctx: MailFromContext): Verdict | void {
  if (lookup('senders', ctx.address.address) === 'REJECT') return reject('blocked');
}
`,
    'scripts/auth.js': 'export default (ctx) => { log(ctx.auth.mechanism); };\n',
    'postern.yaml': `# relative paths: against this file's folder
dataDir: ./data
scripts: ./scripts
users: ./users
localDomains: [example.com]
localRecipients: ./recipients
tables:
  senders: ./senders
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: tls/server.crt, key: tls/server.key, clientCertificates: request, caFiles: [tls/ca.crt], crlFiles: [tls/ca.crl] }
  - name: submission
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: tls/server.crt, key: tls/server.key, clientCertificates: request, caFiles: [tls/ca.crt] }
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
    certificateIdentity: { field: emailAddress }
`,
  };
  for (const [file, text] of Object.entries({ ...defaults, ...files })) {
    await mkdir(join(dir, file, '..'), { recursive: true });
    await writeFile(join(dir, file), text, { mode: text.includes('PRIVATE KEY-----') ? 0o600 : file === 'users' ? 0o640 : 0o644 }); // keys and hashes as an administrator keeps them
  }
  return { dir, config: join(dir, 'postern.yaml') };
}

test('check on a valid configuration with scripts, TLS files, users and a table: exit 0 and "<file>: OK"', async () => {
  const { config } = await configFolder('valid');
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.stderr, '');
  assert.equal(r.stdout, `${config}: OK (2 listeners)\n`);
  assert.equal(r.code, 0);
});

test('check: a syntax error in the scripts folder → exit 1 and <file>:<line>:<col>: SyntaxError', async () => {
  const { dir, config } = await configFolder('bad-script', {
    // The stray `)` is on line 3, column 30 (1-based).
    'scripts/mailfrom.ts': `// blocked senders
export default (ctx) => {
  if (ctx.address.domain === ) return reject('no');
};
`,
  });
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, `${join(dir, 'scripts', 'mailfrom.ts')}:3:30: SyntaxError: Expression expected\n`);
});

test("check: a syntax error in a listener's own scripts folder is found too", async () => {
  const { dir, config } = await configFolder('bad-listener-script', {
    // A .js script (no type stripping): V8's own message, at the `}` on line 3.
    'submission-scripts/rcptto.js': 'export default function (ctx) {\n  return ctx.address.localPart === "x" ? reject("no") :\n}\n',
  });
  const yaml = (await readFile(config, 'utf8')).replace('  - name: submission\n', '  - name: submission\n    scripts: ./submission-scripts\n');
  assert.match(yaml, /scripts: \.\/submission-scripts/);
  await writeFile(config, yaml);
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, `${join(dir, 'submission-scripts', 'rcptto.js')}:3:1: SyntaxError: Unexpected token '}'\n`);
});

// A file of a table, the users or the recipient table is named by a key of the configuration (and a table file can be
// named by several tables, or by a listener's pins through its table): the line says which key, and where it is.
test('check: a table with a broken line → exit 1 naming <file>:<line> and the key (with its line) that names the file', async () => {
  const { dir, config } = await configFolder('bad-table', {
    senders: '# blocked senders\nspammer@bad.example   REJECT\nbroken-line-without-value\nfriend@good.example OK\n',
  });
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, `${join(dir, 'senders')}:3: expected "key value", got "broken-line-without-value" (named by tables.senders at ${config}:8:12)\n`);
});

test('check: a bad line of the users file, of the recipient table, and an unreadable table name their keys too', async () => {
  const { dir, config } = await configFolder('bad-named-files', {
    users: 'no-colon-here\n',
    recipients: 'alice@example.com\nnot-an-address\n',
  });
  await writeFile(config, (await readFile(config, 'utf8')).replace('  senders: ./senders\n', '  senders: ./senders\n  gone: { file: ./missing, format: yaml }\n'));
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 1);
  assert.deepEqual(r.stderr.split('\n').sort(), [
    '',
    `${join(dir, 'missing')}: table "gone": cannot read: ENOENT (named by tables.gone.file at ${config}:9:17)`,
    `${join(dir, 'recipients')}:2: localRecipients: expected "user@domain" or "@domain", got "not-an-address" (named by localRecipients at ${config}:6:18)`,
    `${join(dir, 'users')}:1: expected "name:hash" (named by users at ${config}:4:8)`,
  ]);
});

test('check reports every problem at once: a table, a users file and a script', async () => {
  const { dir, config } = await configFolder('everything-wrong', {
    senders: '# a table\n  continued\n',
    users: 'alice@example.com:plaintext\n',
    // `}` at column 39 where a property name must follow `ctx.`
    'scripts/mailfrom.ts': 'export default (ctx) => { return ctx. };\n',
  });
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.deepEqual(r.stderr.split('\n'), [
    `${join(dir, 'senders')}:2: line starts with whitespace but there is no entry to continue (named by tables.senders at ${config}:8:12)`,
    `${join(dir, 'users')}:1: alice@example.com: not an argon2 hash (make one with: postern hash-password) (named by users at ${config}:4:8)`,
    `${join(dir, 'scripts', 'mailfrom.ts')}:1:39: SyntaxError: Expected ident`,
    '',
  ]);
});

test('check refuses a users file whose hash was cut short: that user could never log in, and nothing said why', async () => {
  const whole = '$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$QmFzZTY0SGFzaEJhc2U2NEhhc2hCYXNlNjRIYXNoISE';
  const { dir, config } = await configFolder('cut-hash', { users: `alice@example.com:${whole}\nbob@example.com:${whole.slice(0, 40)}\n` });
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `${join(dir, 'users')}:2: bob@example.com: not a readable argon2 hash (cut short in copying?): make one with: postern hash-password (named by users at ${config}:4:8)\n`);
});

/** The valid folder plus a delivery section naming outbound client certificates (and CA files). */
async function deliveryFolder(name: string, delivery: string, files: Record<string, string> = {}): Promise<{ dir: string; config: string }> {
  const folder = await configFolder(name, files);
  await writeFile(folder.config, `${await readFile(folder.config, 'utf8')}delivery:\n${delivery}`);
  return folder;
}

test('check reads delivery.clientCertificates: a good Ed25519 and ECDSA certificate, a CA file → exit 0, no warnings', async () => {
  const { config } = await deliveryFolder('outbound-good', `  tls: { mode: verify, clientCertificate: laptop, ca: partners }
  clientCertificates:
    laptop: { cert: out/ed.crt, key: out/ed.key }
    device: { cert: out/ec.pem, key: out/ec.pem }
  caFiles:
    partners: tls/ca.crt
`, {
    'out/ed.crt': await readFile(pki.clients.ed25519.cert, 'utf8'),
    'out/ed.key': await readFile(pki.clients.ed25519.key, 'utf8'),
    'out/ec.pem': await readFile(pki.clients.ecdsa.pem, 'utf8'), // key + certificate in one file
  });
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.stderr, '');
  assert.equal(r.stdout, `${config}: OK (2 listeners)\n`);
  assert.equal(r.code, 0);
});

test('check: a private key every local user can read (a listener\'s, an outbound client certificate\'s, a DKIM key) is a warning at its key\'s line; 0640 is not', async () => {
  const dkim = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const { dir, config } = await deliveryFolder('readable-keys', `  clientCertificates:
    laptop: { cert: out/ed.crt, key: out/ed.key }
  dkim:
    main: { domain: example.com, selector: s1, privateKey: out/dkim.key }
`, {
    'out/ed.crt': await readFile(pki.clients.ed25519.cert, 'utf8'),
    'out/ed.key': await readFile(pki.clients.ed25519.key, 'utf8'),
    'out/dkim.key': dkim,
  });
  for (const key of ['tls/server.key', 'out/ed.key', 'out/dkim.key']) await chmod(join(dir, key), 0o644);
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 0, r.stderr);
  const warnings = r.stderr.trimEnd().split('\n');
  assert.deepEqual(warnings.map((w) => w.replace(/^warning: [^ ]+ /, '')), [
    `listeners[0].tls.key: ${join(dir, 'tls/server.key')}: a private key every local user can read (mode 0644): chmod o-rwx ${join(dir, 'tls/server.key')} (0640, group of the server's user)`,
    `delivery.clientCertificates.laptop.key: ${join(dir, 'out/ed.key')}: a private key every local user can read (mode 0644): chmod o-rwx ${join(dir, 'out/ed.key')} (0640, group of the server's user)`,
    `delivery.dkim.main.privateKey: ${join(dir, 'out/dkim.key')}: a private key every local user can read (mode 0644): chmod o-rwx ${join(dir, 'out/dkim.key')} (0640, group of the server's user)`,
  ], 'one per file: the second listener\'s same key is not said again');
  for (const w of warnings) assert.match(w, new RegExp(`^warning: ${config.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: `), 'at the key\'s line');
  for (const key of ['tls/server.key', 'out/ed.key', 'out/dkim.key']) await chmod(join(dir, key), 0o640);
  const quiet = await checkHere(config);
  assert.equal(quiet.stderr, '');
});

test('check: the CA key of pki.dir, the users file (password hashes), or a postern.yaml whose store.redis.url holds a password, that every local user can read is a warning at its key\'s line; 0640 is not', async () => {
  const { dir, config } = await configFolder('readable-secrets');
  const init = await runInProcess(() => pkiInitCommand({ dir: join(dir, 'ca') }));
  assert.equal(init.code, 0, init.stderr);
  await writeFile(config, `${await readFile(config, 'utf8')}pki: { dir: ./ca }\nstore:\n  redis: { url: "redis://postern:Redis-Secret-1@127.0.0.1:6379" }\n`);
  await chmod(join(dir, 'ca/ca.key'), 0o644);
  await chmod(join(dir, 'users'), 0o644);
  await chmod(config, 0o644);
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stderr.trimEnd().split('\n').map((w) => w.replace(/^warning: [^ ]+:\d+:\d+: /, '')), [
    `pki.dir: ${join(dir, 'ca/ca.key')}: the CA's private key every local user can read (mode 0644): chmod o-rwx ${join(dir, 'ca/ca.key')} (0640, group of the server's user)`,
    `users: ${join(dir, 'users')}: password hashes every local user can read (mode 0644): chmod o-rwx ${join(dir, 'users')} (0640, group of the server's user)`,
    `store.redis.url: ${config}: a Redis password every local user can read (mode 0644): chmod o-rwx ${config} (0640, group of the server's user)`,
  ]);
  assert.ok(!r.stderr.includes('Redis-Secret-1'), 'the password itself is not shown');
  await chmod(join(dir, 'ca/ca.key'), 0o640);
  await chmod(join(dir, 'users'), 0o640);
  await chmod(config, 0o640);
  const quiet = await checkHere(config);
  assert.equal(quiet.stderr, '');
});

test('check: inputs every local user can change (the users file, a table, a CA file, a scripts folder and a script in it, a folder holding an input) are warnings; as installed, none', async () => {
  const { dir, config } = await configFolder('writable-inputs');
  for (const [file, mode] of [['users', 0o666], ['senders', 0o646], ['tls/ca.crt', 0o666], ['scripts', 0o777], ['scripts/auth.js', 0o666], ['tls', 0o777]] as const) await chmod(join(dir, file), mode);
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 0, r.stderr);
  const warnings = r.stderr.trimEnd().split('\n').map((w) => w.replace(/^warning: [^ ]+ /, ''));
  const changeable = (key: string, file: string, what: string): string => `${key}: ${join(dir, file)}: ${what}: any local user could change what the server decides; chmod o-w`;
  assert.deepEqual(warnings, [
    `users: ${join(dir, 'users')}: password hashes every local user can read (mode 0666): chmod o-rwx ${join(dir, 'users')} (0640, group of the server's user)`,
    changeable('scripts', 'scripts', 'every local user may write this folder (mode 0777)'),
    changeable('scripts', 'scripts/auth.js', 'every local user may write this file (mode 0666)'),
    changeable('users', 'users', 'every local user may write this file (mode 0666)'),
    changeable('tables.senders', 'senders', 'every local user may write this file (mode 0646)'),
    changeable('listeners[0].tls.cert', 'tls', `every local user may write this folder, which holds ${join(dir, 'tls/server.crt')} (mode 0777)`),
    changeable('listeners[0].tls.caFiles[0]', 'tls/ca.crt', 'every local user may write this file (mode 0666)'),
  ]);
  for (const w of r.stderr.trimEnd().split('\n')) assert.match(w, new RegExp(`^warning: ${config.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(:\\d+:\\d+)?: `));
  for (const [file, mode] of [['users', 0o640], ['senders', 0o644], ['tls/ca.crt', 0o644], ['scripts', 0o755], ['scripts/auth.js', 0o644], ['tls', 0o1777]] as const) await chmod(join(dir, file), mode);
  const quiet = await checkHere(config);
  assert.equal(quiet.stderr, '', 'a sticky folder (/tmp) lets no one replace another\'s file');
});

test('check: a missing key file, a key that does not match, a missing CA file → exit 1, each as <config file>:<line>:<col>: <config key>: <file>: …', async () => {
  const { dir, config } = await deliveryFolder('outbound-bad', `  clientCertificates:
    laptop: { cert: out/laptop.crt, key: out/laptop.key }
    phone: { cert: out/phone.crt, key: out/phone.key }
  caFiles:
    partners: out/partners.crt
`, {
    'out/laptop.crt': await readFile(pki.clients.ed25519.cert, 'utf8'),
    'out/phone.crt': await readFile(pki.clients.ecdsa.cert, 'utf8'),
    'out/phone.key': await readFile(pki.clients.bob.key, 'utf8'), // bob's ECDSA key, not the phone's
  });
  const r = await cli(['check', '--config', config], null);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  const out = (f: string): string => join(dir, 'out', f);
  // The line of each key in the file deliveryFolder wrote (the columns are those of the values).
  const text = await readFile(config, 'utf8');
  const lineOf = (needle: string): number => text.split('\n').findIndex((l) => l.includes(needle)) + 1;
  assert.deepEqual(r.stderr.split('\n'), [
    `${config}:${lineOf('laptop:')}:42: delivery.clientCertificates.laptop.key: ${out('laptop.key')}: cannot read: ENOENT`,
    `${config}:${lineOf('phone:')}:40: delivery.clientCertificates.phone.key: ${out('phone.key')}: private key does not match certificate ${out('phone.crt')}`,
    `${config}:${lineOf('partners:')}:15: delivery.caFiles.partners: ${out('partners.crt')}: cannot read: ENOENT`,
    '',
  ]);
});

test('check: an expired client certificate is a problem (exit 1); one expiring within 14 days or not yet valid is a warning', async () => {
  const soon = await issueClientCertificate(pki.authorities.ca, {
    commonName: 'soon', keyType: 'ed25519', notBefore: new Date(Date.now() - 86400_000), notAfter: new Date(Date.now() + 5 * 86400_000 + 3600_000),
  });
  const future = await issueClientCertificate(pki.authorities.ca, {
    commonName: 'future', keyType: 'ecdsa', notBefore: new Date(Date.now() + 2 * 86400_000), notAfter: new Date(Date.now() + 400 * 86400_000),
  });
  const files = {
    'out/soon.crt': soon.cert, 'out/soon.key': soon.key, 'out/future.crt': future.cert, 'out/future.key': future.key,
    'out/old.crt': await readFile(pki.clients.expired.cert, 'utf8'), 'out/old.key': await readFile(pki.clients.expired.key, 'utf8'),
  };
  const soonAfter = new X509Certificate(soon.cert).validToDate.toISOString();
  const futureBefore = new X509Certificate(future.cert).validFromDate.toISOString();
  const warned = await deliveryFolder('outbound-warn', `  clientCertificates:
    soon: { cert: out/soon.crt, key: out/soon.key }
    future: { cert: out/future.crt, key: out/future.key }
`, files);
  const w = await cli(['check', '--config', warned.config], null);
  assert.equal(w.code, 0, w.stderr);
  assert.equal(w.stdout, `${warned.config}: OK (2 listeners)\n`);
  assert.deepEqual(w.stderr.split('\n'), [
    // At the line of the key that names the file, as the errors about these files are.
    `warning: ${warned.config}:20:19: delivery.clientCertificates.soon.cert: ${join(warned.dir, 'out', 'soon.crt')}: certificate "CN=soon" expires on ${soonAfter} (in 5 days)`,
    `warning: ${warned.config}:21:21: delivery.clientCertificates.future.cert: ${join(warned.dir, 'out', 'future.crt')}: certificate "CN=future" is not valid before ${futureBefore}`,
    '',
  ]);

  const expired = await deliveryFolder('outbound-expired', `  clientCertificates:
    old: { cert: out/old.crt, key: out/old.key }
`, files);
  const e = await checkHere(expired.config);
  assert.equal(e.code, 1);
  assert.equal(e.stdout, '');
  const re = (text: string): string => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  assert.match(e.stderr, new RegExp(`^${re(expired.config)}:20:18: delivery\\.clientCertificates\\.old\\.cert: ${re(join(expired.dir, 'out', 'old.crt'))}: certificate "CN=old-laptop[^"]*" expired on 2021-01-01T00:00:00\\.000Z\n$`));
});

test('the command line coarsens its timer slack to 2 ms (isolated-vm timer wake-ups fold together)', async () => {
  const child = spawn(process.execPath, [MAIN, 'hash-password'], { stdio: ['pipe', 'ignore', 'ignore'], timeout: 60_000 });
  try {
    const slack = async (): Promise<string> => (await readFile(`/proc/${child.pid}/timerslack_ns`, 'utf8')).trim();
    // hash-password waits on stdin meanwhile
    await until('the command line sets its timer slack to 2 ms', async () => (await slack()) === '2000000');
    assert.equal((await readFile('/proc/self/timerslack_ns', 'utf8')).trim() === '2000000', false, 'this test process keeps its own');
  } finally {
    child.kill();
  }
});

// examples/systemd/postern.service as docs/operations.md installs it, emulated with real tools
// (test/helpers/systemd-unit.ts): its user, capabilities, umask, address families, and a file system read-only
// but for its ReadWritePaths.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { once } from 'node:events';
import { until } from '../helpers/wait.ts';
import { SERVICE_USER, type UnitServer, directive, startUnderUnit, unitEmulationSkip, unitSeconds, unitService } from '../helpers/systemd-unit.ts';
import { rcptRequest, requestText } from '../policy-service/helpers/policy-client.ts';
import { runCli } from '../helpers/cli.ts';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const skip = unitEmulationSkip();

// The unit's CacheDirectory= for every start of this file, kept from one to the next as systemd keeps it: each start
// after the first runs on compiled code (half the CPU of a process's start), as a restarted service does.
const cacheHome = await mkdtemp(join(tmpdir(), 'postern-unit-cache-'));
await chmod(cacheHome, 0o755);
const cacheDirectory = join(cacheHome, 'cache');

/** A port below 1024 free on every IPv4 address: 25 if it is, else one of 600–1000. */
async function freePrivilegedPort(): Promise<number> {
  for (const port of [25, ...Array.from({ length: 400 }, (_, i) => 600 + i)]) {
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer().once('error', () => resolve(false));
      s.listen(port, '0.0.0.0', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port below 1024');
}

// An address of this machine's interfaces other than loopback (which the loop check knows without asking).
const interfaceAddress = Object.values(networkInterfaces()).flat().find((i) => i?.family === 'IPv4' && !i.internal)?.address ?? '127.0.0.1';

const postfix = (() => {
  const [uid, gid] = /^postfix:[^:]*:(\d+):(\d+):/m.exec(readFileSync('/etc/passwd', 'utf8'))?.slice(1).map(Number) ?? [];
  return uid === undefined ? null : { uid, gid: gid! };
})();

// docs/postfix-policy.md's lines, as an administrator copies them (the policy service test asserts they are found).
const policyDocs = (() => {
  const page = readFileSync(new URL('../../docs/postfix-policy.md', import.meta.url), 'utf8');
  const folder = /^install -d -o postern -g postfix -m (\d+) (\/var\/spool\/postfix\/\S+)$/m.exec(page);
  return { folder, listen: /^ {4}listen: (unix:\S+)$/m.exec(page)?.[1], socket: /^ {4}socket: (\{.*\})$/m.exec(page)?.[1] };
})();
const withPolicyService = !!(postfix && policyDocs.folder && policyDocs.listen && policyDocs.socket);

interface Shared { s: UnitServer; mx: number; tls: TestPki; device: string }

/**
 * One start under the unit for the three tests that do not stop, reload or fail it (each start costs its ExecStartPre
 * check, a supervisor, a worker and a queue process): port 25 with a next hop that is itself, the policy service socket
 * of docs/postfix-policy.md (with a postfix user), and a STARTTLS listener verifying against root's CA in
 * /etc/postern/ca. The first test starts it (the file's first start: a new cache), the pki test stops it.
 */
let shared: Promise<Shared> | undefined;
// The cache folder goes after the server that writes into it (after hooks run in the order they were added).
after(async () => { await (await shared?.catch(() => undefined))?.s.stop(); await rm(cacheHome, { recursive: true, force: true }); });
function sharedServer(): Promise<Shared> {
  shared ??= (async () => {
    const mx = await freePrivilegedPort();
    assert.ok(!existsSync(cacheDirectory), 'the first start of this file: its cache is new');
    const tls = await makeTestPki(); // the server's own certificate
    let device = '';
    const { folder, listen, socket } = policyDocs;
    const s = await startUnderUnit({
      cacheDirectory,
      ports: { mx },
      folders: withPolicyService ? [{ unitPath: folder![2]!, uid: SERVICE_USER.uid, gid: postfix!.gid, mode: parseInt(folder![1]!, 8) }] : [],
      files: { '/etc/postern/tls/mx.crt': readFileSync(tls.server.cert, 'utf8'), '/etc/postern/tls/mx.key': readFileSync(tls.server.key, 'utf8') },
      async prepare(path) {
        const ca = path('/etc/postern/ca');
        const init = await runCli(['pki', 'init', '--dir', ca, '--name', 'Example Mail CA']); // as root: sudo
        assert.equal(init.code, 0, init.stderr);
        const issued = await runCli(['pki', 'issue', 'alice@example.test', '--device', 'laptop', '--dir', ca, '--json']);
        assert.equal(issued.code, 0, issued.stderr);
        device = join(ca, 'devices', readdirSync(join(ca, 'devices')).find((f) => f.endsWith('.pem'))!);
      },
      config: `dataDir: /var/lib/postern
workers: 1
localDomains: [loop.test, example.org, example.test]
listeners:
  - { name: mx, listen: "0.0.0.0:{PORT:mx}", reverseDns: false, limits: { greetingDelayMs: 0 } }
  - name: in
    listen: "127.0.0.1:{PORT:in}"
    reverseDns: false
    limits: { greetingDelayMs: 0 }
    tls: { mode: starttls, cert: /etc/postern/tls/mx.crt, key: /etc/postern/tls/mx.key, clientCertificates: request, caFiles: [/etc/postern/ca/ca.crt], crlFiles: [/etc/postern/ca/ca.crl] }
    certificateIdentity: { field: emailAddress }
delivery:
  route: { smarthost: { host: ${interfaceAddress}, port: {PORT:mx} } }
  tls: { mode: none }
  scanIntervalMs: 200
${withPolicyService ? `policyServices:
  - name: postfix
    listen: ${listen}
    socket: ${socket}
` : ''}`,
    });
    return { s, mx, tls, device };
  })();
  return shared;
}

test('under the unit: port 25 on every address as the service user, no core dumps; a next hop that is this server bounces as a loop (the interfaces are read without netlink)', { skip, timeout: 120_000 }, async () => {
  const { s, mx: port } = await sharedServer();
  // Type=notify: startUnderUnit returned at READY=1, as systemctl start does; the port answers then.
  assert.deepEqual(s.notifications, ['READY=1']);
  const c = await SmtpTestClient.connect(port);
  assert.equal((await c.read(30_000)).code, 220);
  assert.equal((await c.command('EHLO client.test', 30_000)).code, 250);
  const r = await c.sendMail('a@sender.test', ['u@loop.test'], 'Subject: loop\r\n\r\nx\r\n');
  assert.equal(r.code, 250, r.text);
  await c.quit();
  const id = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
  const line = await s.waitFor('the delivery line', () => s.logs.find((l) => l.id === id && (l.status === 'bounced' || l.status === 'deferred')), 20_000).catch((err: Error) => { throw new Error(`${err.message}\n${s.lines.slice(-15).join('\n')}`); });
  assert.match(String(line.reply), /loops back to myself/, JSON.stringify(line));
  // CacheDirectory=: the code compiled for the service's processes is kept there (bin/compile-cache.js).
  const cache = s.path('/var/cache/postern');
  assert.ok(readdirSync(cache).flatMap((sub) => readdirSync(join(cache, sub))).length > 10, 'compiled code kept in /var/cache/postern');
  // LimitCORE=0: no process holding the keys (the supervisor, the worker, the queue process) can leave a core dump.
  const pids = [s.proc.pid!, ...(await s.cluster()).processes.map((p) => p.pid!)];
  for (const pid of pids) assert.match(readFileSync(`/proc/${pid}/limits`, 'utf8'), /^Max core file size +0 +0 +bytes/m, `process ${pid}`);
});

/** What a client running as `user` gets from the unix socket at `path`: the answer line, or the error code. */
function askAs(user: { uid: number; gid: number }, path: string): string {
  const client = `const s = require('net').connect(process.argv[1]);
s.on('error', (e) => { process.stdout.write(e.code); });
s.on('connect', () => s.write(process.argv[2]));
s.on('data', (d) => { process.stdout.write(String(d).split('\\n')[0]); s.destroy(); });`;
  const r = spawnSync(process.execPath, ['-e', client, path, requestText(rcptRequest({ recipient: 'x@example.org' }))], { ...user, encoding: 'utf8', timeout: 30_000 });
  return r.stdout;
}

test('under the unit: the policy service socket of docs/postfix-policy.md is made in Postfix\'s queue folder, for Postfix and no one else, with no CAP_CHOWN', { skip: skip || (!postfix && 'no postfix user'), timeout: 120_000 }, async () => {
  // The docs' lines, as an administrator copies them.
  const { folder, listen, socket } = policyDocs;
  assert.ok(folder, 'docs/postfix-policy.md: the install line of the socket folder');
  assert.ok(listen && socket, 'docs/postfix-policy.md: the listen and socket lines');
  assert.ok(listen.startsWith(`unix:${folder[2]}/`), `${listen} in ${folder[2]}`);
  const { s } = await sharedServer();
  const path = s.path(listen.slice(5));
  await s.waitFor('the policy service', () => s.logs.some((l) => l.msg === 'supervisor started'));
  assert.equal(askAs(postfix!, path), 'action=DUNNO');
  assert.equal(askAs({ uid: 65534, gid: 65534 }, path), 'EACCES', 'another local user');
  const st = statSync(path);
  assert.equal(st.uid, SERVICE_USER.uid);
  assert.equal(st.gid, postfix!.gid);
});

test('under the unit: a socket.owner it cannot give fails the start naming CAP_CHOWN and what works without it', { skip: skip || (!postfix && 'no postfix user'), timeout: 120_000 }, async () => {
  const started = startUnderUnit({
    cacheDirectory,
    folders: [{ unitPath: '/var/spool/postfix/postern', uid: SERVICE_USER.uid, gid: postfix!.gid, mode: 0o2750 }],
    config: `dataDir: /var/lib/postern
workers: 1
policyServices:
  - { name: postfix, listen: "unix:/var/spool/postfix/postern/policy", socket: { owner: postfix, mode: '0660' } }
`,
  });
  await assert.rejects(started, /policy service postfix: cannot listen on unix:.*EPERM.*needs root or CAP_CHOWN; leave socket\.owner out/);
});

test('`sudo postern pki init` in /etc/postern/ca (docs/client-certificates.md): the server under the unit verifies the devices it issues; in the data directory, the server issues with it itself (the account page)', { skip, timeout: 180_000 }, async () => {
  const { s, tls, device } = await sharedServer();
  try {
    const c = await SmtpTestClient.connect(s.port('in'));
    const pem = readFileSync(device, 'utf8');
    await c.hello({ starttls: { cert: pem, key: pem, ca: readFileSync(tls.ca.cert, 'utf8') } });
    const r = await c.sendMail('alice@example.test', ['b@example.test']);
    assert.equal(r.code, 250, r.text);
    await c.quit();
    assert.ok(s.logs.some((l) => l.identity === 'alice@example.test'), 'the issued certificate named its account');
    // Root's CA in /etc/postern/ca: its key stays out of the server's reach.
    assert.notEqual(spawnSync('cat', [join(s.path('/etc/postern/ca'), 'ca.key')], SERVICE_USER).status, 0);

    // The account page's CA, in the data directory: made by root, the server's to issue with.
    const ca = join(s.path('/var/lib/postern'), 'ca');
    const init = await runCli(['pki', 'init', '--dir', ca, '--name', 'Example Mail CA']);
    assert.equal(init.code, 0, init.stderr);
    const issued = await runCli(['pki', 'issue', 'a@example.test', '--device', 'phone', '--dir', ca, '--out', join(s.path('/var/lib/postern'), 'out')], { as: SERVICE_USER });
    assert.equal(issued.code, 0, issued.stderr);
  } finally { shared = undefined; await s.stop(); }
});

test('under the unit: ExecReload takes an edited script, and fails naming file and line when the reload is refused; KillSignal (STOPPING=1 told) stops within TimeoutStopSec, a transaction left open included, exit 0 (no Restart=on-failure)', { skip, timeout: 180_000 }, async () => {
  const unit = unitService();
  const s = await startUnderUnit({
    cacheDirectory,
    config: `dataDir: /var/lib/postern
workers: 1
scripts: /etc/postern/scripts
localDomains: [example.test]
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
`,
    files: { '/etc/postern/scripts/rcptto.ts': `export default () => reject('first');` },
  });
  try {
    const greeted = async (): Promise<SmtpTestClient> => {
      const c = await SmtpTestClient.connect(s.port('in'));
      assert.equal((await c.read(30_000)).code, 220);
      assert.equal((await c.command('EHLO client.test', 30_000)).code, 250);
      assert.equal((await c.command('MAIL FROM:<a@example.net>', 30_000)).code, 250);
      return c;
    };
    const before = await greeted();
    assert.match((await before.command('RCPT TO:<b@example.test>', 30_000)).text, /first/);
    // `systemctl reload` succeeds or fails with ExecReload: a refused reload (a script that does not compile) must fail
    // it, naming the file and line. `kill -HUP $MAINPID` exited 0 as the signal left, whatever came of the reload.
    writeFileSync(s.path('/etc/postern/scripts/rcptto.ts'), `export default () => { return reject('second' };`);
    const refused = await s.reload();
    assert.equal(refused.status, 1, `${refused.stdout}${refused.stderr}`);
    assert.match(refused.stderr, new RegExp(`^postern: reload refused, the running configuration stays in force:\n${s.path('/etc/postern/scripts/rcptto.ts')}:1:\\d+: SyntaxError`));
    assert.match((await before.command('RCPT TO:<c@example.test>', 30_000)).text, /first/, 'the running script stays');
    writeFileSync(s.path('/etc/postern/scripts/rcptto.ts'), `export default () => reject('second');`);
    const reloads = s.logs.filter((l) => l.msg === 'reloaded').length;
    const taken = await s.reload();
    assert.equal(taken.status, 0, `${taken.stdout}${taken.stderr}`);
    assert.match(taken.stdout, /^postern: reloaded \(generation \d+\)\n$/);
    await s.waitFor('its log line', () => s.logs.filter((l) => l.msg === 'reloaded').length > reloads);
    await until('the edited script answers', async () => {
      const c = await greeted();
      const r = await c.command('RCPT TO:<b@example.test>', 30_000);
      c.destroy();
      return /second/.test(r.text);
    });
    // A client in the middle of a transaction that says nothing more: the server's own stop waits end first.
    const idle = await greeted();
    const started = Date.now();
    s.proc.kill(directive(unit, 'KillSignal') as NodeJS.Signals);
    await until('STOPPING=1', () => s.notifications.includes('STOPPING=1'));
    const [code] = await once(s.proc, 'exit') as [number | null];
    assert.equal(code, 0, 'a stop, not a failure to restart after');
    assert.ok(Date.now() - started < unitSeconds(directive(unit, 'TimeoutStopSec')!), 'stopped before systemd would SIGKILL it');
    idle.destroy();
    before.destroy();
  } finally { await s.stop(); }
});

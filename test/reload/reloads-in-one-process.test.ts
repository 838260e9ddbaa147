// Reloads in one server process: asked during a run or a start, editors' files, local recipients without a local
// domain, the longest time limit, polling at the descriptor limit, certificate renewal and rotation, script file
// limits, status at stop, symlinked inputs and TLS all or nothing. One file for what were several (one test process
// and one load of the engine instead of one each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, mkdir, mkdtemp, readFile, rm, symlink, rename, appendFile, copyFile, truncate, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createHash, X509Certificate } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { TLSSocket } from 'node:tls';
import { execFileSync } from 'node:child_process';
import { startTestServer, type TestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';
import { MX_WITH_TABLE_CONFIG, mailFromReply, verdictScript } from './helpers.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { exhaustDescriptors } from '../helpers/process-resources.ts';
import { until } from '../helpers/wait.ts';
import { makeTestPki, clientTlsOptions } from '../helpers/pki.ts';
import { issueServerCertificate, loadAuthority, createCrl } from '../../engine/certificates/index.ts';
import type { ReloadOutcome } from '../../engine/reload/reloader.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { PosternServer } from '../../engine/smtp/postern-server.ts';

describe('asked-during-a-run', () => {
  /**
   * A reload asked while another is being built gets the outcome of a run that read the inputs after the
   * request, not of the run under way (which read them before the caller's edit): the "ok" an administrator or
   * a test gets after an edit is about that edit.
   */
  test('a reload asked during a build, after an edit, resolves once the edit is in force; a broken edit is its own refusal', async () => {
    const s = await startTestServer({ config: MX_WITH_TABLE_CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') } });
    const file = join(s.dir, 'scripts', 'mailfrom.ts');
    let release!: () => void;
    let entered!: () => void;
    const inBuild = new Promise<void>((r) => { entered = r; });
    s.reloader.tuning.afterBuild = async () => {
      s.reloader.tuning.afterBuild = undefined; // only the first build waits
      entered();
      await new Promise<void>((r) => { release = r; });
    };
    try {
      await writeFile(file, verdictScript('v1'));
      const first = s.reloader.reload('SIGHUP');
      await inBuild; // the first run has read v1 and waits
      await writeFile(file, verdictScript('v2'));
      const second = s.reloader.reload('SIGHUP');
      release();
      await first; // superseded by v2 (or, when the file watcher's run was the one held, ended before it)
      const outcome = await second;
      assert.equal(outcome.ok, true, outcome.errors.join('\n'));
      assert.equal(await mailFromReply(s), '550 5.7.1 v2', 'the second caller was told of a content that is not in force');

      // The same with a broken edit: the caller asked after it hears of the refusal, not of the run before.
      s.reloader.tuning.afterBuild = async () => {
        s.reloader.tuning.afterBuild = undefined;
        entered();
        await new Promise<void>((r) => { release = r; });
      };
      const inBuild2 = new Promise<void>((r) => { entered = r; });
      await writeFile(file, verdictScript('v3'));
      const third = s.reloader.reload('SIGHUP');
      await inBuild2;
      await writeFile(file, 'export default (ctx) => {\n');
      const fourth = s.reloader.reload('SIGHUP');
      release();
      // The run that read v3 saw the broken edit land during its build (or the third call coalesced into the
      // run after it, with the file watcher's run held): v3 was never in force either way.
      const t = await third;
      assert.ok(t.superseded === true || !t.ok, 'v3 reported as in force');
      const refused = await fourth;
      assert.equal(refused.ok, false, 'a broken edit reported as reloaded');
      assert.match(refused.errors.join('\n'), /mailfrom\.ts/);
      assert.equal(await mailFromReply(s), '550 5.7.1 v2', 'v3 was never whole in force; the broken edit is refused');
    } finally {
      s.reloader.tuning.afterBuild = undefined;
      release?.();
      await s.stop();
    }
  });
});

describe('changed-during-start', () => {
  // An input changed while the server starts (a deploy finishing its copy as the service starts; under `postern serve`,
  // a worker replaced after a crash while an administrator edits a table): the first generation was built from the
  // content before the change, and the reloader's record of what it was built from was taken afterwards, from the disk.
  // The change was never applied (a later settled change found "nothing changed"), and `postern status` gave the new
  // file's SHA-256 for a generation running the old one. The change is made here at a point of the start's own making:
  // its log line about a stray script, written once the first generation is built.
  const SCRIPT = `export default (ctx) => lookup('blocked', ctx.address.address) ? reject('blocked') : undefined;\n`;

  test('a table renamed over while the first generation is being built: in force once the server runs, and its SHA-256 is the one in force', { timeout: 60_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-start-change-'));
    const table = join(dir, 'blocked');
    try {
      await mkdir(join(dir, 'scripts'));
      await writeFile(join(dir, 'scripts', 'mailfrom.ts'), SCRIPT);
      await writeFile(join(dir, 'scripts', 'rcptTo.ts'), SCRIPT); // not a hook's name: a warning once the generation is built
      await writeFile(table, 'old@example.test spam\n');
      await writeFile(join(dir, 'postern.yaml'), `dataDir: ${JSON.stringify(join(dir, 'data'))}\nscripts: ${JSON.stringify(join(dir, 'scripts'))}\n`
        + 'localDomains: [example.com]\ntables:\n  blocked: ./blocked\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\n');
      let changed = false;
      const sink = new Writable({
        write(chunk: Buffer, _enc, cb) {
          if (!changed && chunk.toString().includes('rcptTo.ts: not a hook')) {
            changed = true;
            writeFileSync(`${table}.new`, 'new@example.test spam\n');
            renameSync(`${table}.new`, table); // complete when it appears: taken at once
          }
          cb();
        },
      });
      const s = await startPostern({ configPath: join(dir, 'postern.yaml'), logger: createLogger('debug', sink) });
      try {
        assert.ok(changed, 'the table was changed once the first generation was built');
        await s.reloader.whenIdle();
        const port = { port: (name: string) => s.addresses.get(name)!.port };
        assert.match(await mailFromReply(port, 'new@example.test'), /blocked/, 'the table on disk is in force');
        assert.doesNotMatch(await mailFromReply(port, 'old@example.test'), /blocked/);
        const sha = createHash('sha256').update(await readFile(table)).digest('hex');
        assert.equal(s.reloader.state().files[table], sha);
      } finally {
        await s.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('editor-files', () => {
  // Editors leave files beside a script while it is edited: emacs its lock `.#mailfrom.ts` (a dangling symbolic link
  // naming user, host and pid) and `#mailfrom.ts#`, vim `.mailfrom.ts.swp` and `mailfrom.ts~`. None is a script: none
  // may make a reload (a new generation, new isolates, sessions moved at their next transaction) nor block one.
  test('editor lock, autosave, swap and backup files beside a script make no reload; the saved edit makes one', async () => {
    const s = await startTestServer({ config: MX_WITH_TABLE_CONFIG, files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v1') } });
    const folder = join(s.dir, 'scripts');
    try {
      await s.reloader.whenIdle();
      const before = s.reloader.state();
      // emacs starts editing: its lock, then an autosave; vim's swap file and a backup.
      await symlink('root@mail.example.12345:1733500000', join(folder, '.#mailfrom.ts'));
      await writeFile(join(folder, '#mailfrom.ts#'), verdictScript('autosaved, not saved'));
      await writeFile(join(folder, '.mailfrom.ts.swp'), 'swap');
      await writeFile(join(folder, 'mailfrom.ts~'), verdictScript('v0'));
      await s.reloader.whenIdle();
      assert.equal(s.reloader.state().generation, before.generation, 'no new generation for editor files');
      assert.equal(s.reloader.status.data.reloads, before.reloads);

      // The save, and emacs removing its lock and autosave.
      await writeFile(join(folder, 'mailfrom.ts'), verdictScript('v2'));
      await rm(join(folder, '.#mailfrom.ts'));
      await rm(join(folder, '#mailfrom.ts#'));
      await s.reloader.whenIdle();
      assert.equal(await mailFromReply(s), '550 5.7.1 v2');
      assert.equal(s.reloader.status.data.reloads, before.reloads + 1, 'one reload: the save');
      assert.equal(s.reloader.status.data.watching, null, 'events came for each change');
    } finally { await s.stop(); }
  });
});

describe('local-recipients-no-local-domain', () => {
  // A recipient table that lists no address of any local domain refuses every local recipient with a permanent 550,
  // as an emptied one does, which is refused for that reason. One whose every entry has the domain mistyped
  // (`alice@exmaple.com`, a generator's template), or is of a domain not yet in localDomains, was taken with a warning:
  // from that reload on all mail to the local domains bounced at its senders. Now refused as the emptied table is: the
  // running table answers. A real server, real SMTP client, real reloads.
  let server: TestServer;
  before(async () => {
    server = await startTestServer({
      files: { recipients: 'alice@example.com\nbob@example.org\n' },
      config: `
localDomains: [example.com, example.org]
localRecipients: ./recipients
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  async function rcpt(to: string): Promise<number> {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    await c.command('MAIL FROM:<sender@elsewhere.example>');
    const r = await c.command(`RCPT TO:<${to}>`);
    await c.quit();
    return r.code;
  }

  test('a table of no local domain\'s addresses is refused with its file; one that misses a local domain is taken with a warning', async () => {
    const table = join(server.dir, 'recipients');
    await writeFile(`${table}.new`, 'alice@exmaple.com\nbob@exmaple.org\n');
    await rename(`${table}.new`, table);
    const r = await server.reloader.reload('SIGHUP');
    assert.equal(r.ok, false, 'not taken');
    assert.match(String(server.reloader.status.data.lastError), new RegExp(`${table}: localRecipients: lists no address of any local domain`));
    assert.equal(await rcpt('alice@example.com'), 250, 'the running table answers');
    assert.equal(await rcpt('bob@example.org'), 250);

    await writeFile(`${table}.new`, 'alice@example.com\nbob@exmaple.org\n');
    await rename(`${table}.new`, table);
    assert.equal((await server.reloader.reload('SIGHUP')).ok, true, 'one local domain without entries: a warning, as before');
    assert.equal(await rcpt('alice@example.com'), 250);
    assert.equal(await rcpt('bob@example.org'), 550);
  });
});

describe('longest-time-limit', () => {
  // A reload's build is bounded by buildDeadlineMs(): 5 s plus every top level of every isolate at its time limit.
  // That product of configured values passed a timer's reach (2^31-1 ms) with sandbox.timeoutMs at its largest
  // (or a long one with 64 isolates and several scripts folders): Node ran the timer after 1 ms, and every reload
  // was refused as timed out, the edit never in force. The warning Node gives for such a timer is counted (it is
  // emitted when the timer is set, no timing involved); the reply shows whether the edit is in force.
  test('sandbox.timeoutMs 2147483647: a reload is built and in force, no timer overflows', async () => {
    const overflows: string[] = [];
    const onWarning = (w: Error): void => { if (w.name === 'TimeoutOverflowWarning') overflows.push(w.message); };
    process.on('warning', onWarning);
    const s = await startTestServer({
      config: `${MX_WITH_TABLE_CONFIG}sandbox: { timeoutMs: 2147483647 }\n`,
      files: { senders: '' }, scripts: { 'mailfrom.ts': verdictScript('v0') },
    });
    try {
      assert.equal(await mailFromReply(s), '550 5.7.1 v0');
      await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), verdictScript('v1'));
      const outcome = await s.reloader.reload('test');
      assert.deepEqual([outcome.ok, outcome.errors], [true, []]);
      assert.equal(await mailFromReply(s), '550 5.7.1 v1');
    } finally {
      process.off('warning', onWarning);
      await s.stop();
    }
    assert.deepEqual(overflows, []);
  });
});

describe('poll-at-fd-limit', () => {
  // The inputs' status poll (every second, beside the file watch) at the process's open-file limit: reading a scripts
  // folder failed with EMFILE, which the poll took for a change of the folder; no event came for it (nothing had
  // changed), so the next poll concluded that the file system reports no changes: logged at error as "overlayfs,
  // FUSE, NFS, a shared folder?", file watching given up for polling for the rest of the process's life, and
  // `postern status` saying so. A read that failed for want of descriptors says nothing about the file: that poll
  // is skipped, and the next one compares with what was last read.
  test('polls at the open-file limit neither count as a change nor blame the file system', { timeout: 60_000 }, async () => {
    const s = await startTestServer({ config: PLAIN_MX_CONFIG, scripts: { 'rcptto.ts': 'export default () => accept();' } });
    try {
      const polls = (): number => s.reloader.watchEvents.polls;
      await until('two polls (a baseline)', () => polls() >= 2);
      const reloads: unknown[] = [];
      s.reloader.onReload((o) => reloads.push(o));
      const from = polls();
      const full = exhaustDescriptors();
      try {
        // Kept at the limit (what the process closes meanwhile filled again) for three polls.
        await until('three polls at the open-file limit', () => { full.topUp(); return polls() >= from + 3; });
      } finally {
        full.release();
      }
      const after = polls();
      await until('two polls after', () => polls() >= after + 2);
      const blamed = s.logs.filter((l) => /file changes are not watched/.test(String(l.msg)));
      assert.deepEqual(blamed.map((l) => l.msg), [], 'no file system blamed for the process\'s own lack of descriptors');
      assert.equal(s.reloader.status.data.watching, null, 'status: still watched');
      assert.equal(reloads.length, 0, 'nothing changed: no reload');
      // Events still come and are acted on.
      await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), 'export default () => {};');
      await until('the edit reloaded', () => reloads.length > 0);
    } finally {
      await s.stop();
    }
  });
});

describe('renewal', () => {
  // Files the configuration names, changed on disk without a configuration edit: a certbot renewal (new files
  // in archive/, the live/ symlinks switched one after the other), a CA bundle appended to, a pin table caught
  // truncated mid-write. Each complete state is in force at its reload; a broken intermediate one is refused
  // and the last good one stays.
  /** The outcome of the next reload that found a change. */
  const nextReload = (s: TestServer): Promise<ReloadOutcome> => new Promise((resolve) => {
    const stop = s.reloader.onReload((o) => { if (o.changed) { stop(); resolve(o); } });
  });

  /** ln -sfn as certbot does it: a new link beside the old, renamed over it (one event, never a missing file). */
  async function switchLink(link: string, target: string): Promise<void> {
    await symlink(target, `${link}.new`);
    await rename(`${link}.new`, link);
  }

  test('certbot renewal through live/ symlinks: the new certificate with the old key is refused, the old pair serves; the key switched, the new pair serves', async () => {
    const pki = await makeTestPki();
    const ca = await readFile(pki.ca.cert, 'utf8');
    const renewed = await issueServerCertificate(pki.authorities.ca, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' });
    const s = await startTestServer({
      files: {
        'archive/mx/fullchain1.pem': await readFile(pki.server.cert, 'utf8'), 'archive/mx/privkey1.pem': await readFile(pki.server.key, 'utf8'),
        'archive/mx/fullchain2.pem': renewed.cert + ca, 'archive/mx/privkey2.pem': renewed.key,
      },
      config: `
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ./archive/mx/fullchain1.pem, key: ./archive/mx/privkey1.pem }
`,
    });
    const live = join(s.dir, 'live', 'mx');
    const served = async (): Promise<string> => {
      const c = await SmtpTestClient.connect(s.port('sub'), { implicitTls: { ca } });
      assert.equal((await c.read()).code, 220);
      const fp = new X509Certificate((c.socket as TLSSocket).getPeerCertificate(false).raw).fingerprint256;
      await c.quit();
      return fp;
    };
    try {
      // certbot's layout, and the configuration pointed at its live/ links.
      await mkdir(live, { recursive: true });
      await switchLink(join(live, 'fullchain.pem'), '../../archive/mx/fullchain1.pem');
      await switchLink(join(live, 'privkey.pem'), '../../archive/mx/privkey1.pem');
      let outcome = nextReload(s);
      const config = join(s.dir, 'postern.yaml');
      await writeFile(config, (await readFile(config, 'utf8')).replace('./archive/mx/fullchain1.pem', './live/mx/fullchain.pem').replace('./archive/mx/privkey1.pem', './live/mx/privkey.pem'));
      assert.equal((await outcome).ok, true);
      const first = await served();
      assert.equal(first, new X509Certificate(await readFile(pki.server.cert, 'utf8')).fingerprint256);

      outcome = nextReload(s);
      await switchLink(join(live, 'fullchain.pem'), '../../archive/mx/fullchain2.pem');
      const half = await outcome;
      assert.equal(half.ok, false);
      assert.match(half.errors.join('\n'), /privkey\.pem: private key does not match certificate/);
      assert.equal(await served(), first, 'the last good pair serves');

      outcome = nextReload(s);
      await switchLink(join(live, 'privkey.pem'), '../../archive/mx/privkey2.pem');
      const whole = await outcome;
      assert.equal(whole.ok, true, whole.errors.join('\n'));
      assert.equal(await served(), new X509Certificate(renewed.cert).fingerprint256);
      assert.equal(s.reloader.status.data.lastError, null);
    } finally { await s.stop(); }
  });

  /** A STARTTLS listener: a session with a certificate named by `pins` (or verified by ca.crt) is logged in; MAIL FROM tells. */
  async function startPinnedServer(files: Record<string, string>): Promise<TestServer> {
    return startTestServer({
      files,
      config: `
tables:
  devices: ./devices
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ./server.crt, key: ./server.key, clientCertificates: request, caFiles: [./ca.crt] }
    certificateIdentity: { field: CN, pins: devices, autoLogin: true }
    auth: { required: true }
    limits: { greetingDelayMs: 0 }
`,
    });
  }

  /** The reply to MAIL FROM on a session that presented `client`'s certificate: 250 logged in, 530 not. */
  async function mailFromWith(s: TestServer, client: { ca: string; cert: string; key: string }): Promise<number> {
    const c = await SmtpTestClient.connect(s.port('sub'));
    await c.read();
    await c.command('EHLO x.example');
    await c.starttls(client);
    await c.command('EHLO x.example');
    const code = (await c.command('MAIL FROM:<a@example.test>')).code;
    c.destroy();
    return code;
  }

  test('a CA appended to the caFiles bundle: its clients are verified from the reload on, the first CA\'s still are', async () => {
    const pki = await makeTestPki();
    const s = await startPinnedServer({
      'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8'),
      'ca.crt': await readFile(pki.ca.cert, 'utf8'), devices: '',
    });
    const stranger = { ...await clientTlsOptions(pki, 'stranger'), ca: await readFile(pki.ca.cert, 'utf8') };
    try {
      assert.equal(await mailFromWith(s, await clientTlsOptions(pki, 'alice')), 250);
      assert.equal(await mailFromWith(s, stranger), 530, 'a certificate of the other CA is not verified yet');
      const outcome = nextReload(s);
      await appendFile(join(s.dir, 'ca.crt'), await readFile(pki.otherCa.cert, 'utf8'));
      assert.equal((await outcome).ok, true);
      assert.equal(await mailFromWith(s, stranger), 250);
      assert.equal(await mailFromWith(s, await clientTlsOptions(pki, 'alice')), 250);
    } finally { await s.stop(); }
  });

  test('a pin table caught truncated mid-line is refused naming its line; the whole table in force before stays, and the rewrite completes it', async () => {
    const pki = await makeTestPki();
    const device = pki.clients.selfsigned;
    const whole = `# devices\n${pki.clients.ecdsa.pinSha256} carol\n${device.pinSha256} dave\n`;
    const s = await startPinnedServer({
      'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8'),
      'ca.crt': await readFile(pki.ca.cert, 'utf8'), devices: whole,
    });
    const dave = { ...await clientTlsOptions(pki, 'selfsigned'), ca: await readFile(pki.ca.cert, 'utf8') };
    try {
      assert.equal(await mailFromWith(s, dave), 250);
      // Rewritten in place, and read when the writer has written up to the middle of dave's pin.
      let outcome = nextReload(s);
      await writeFile(join(s.dir, 'devices'), whole.slice(0, whole.indexOf(device.pinSha256) + 20));
      const partial = await outcome;
      assert.equal(partial.ok, false);
      assert.match(partial.errors.join('\n'), /devices:3:/);
      assert.equal(await mailFromWith(s, dave), 250, 'the table in force before still names dave');
      outcome = nextReload(s);
      await writeFile(join(s.dir, 'devices'), whole.replace(' dave', ' dave2'));
      assert.equal((await outcome).ok, true);
      assert.equal(await mailFromWith(s, dave), 250);
      assert.equal(s.reloader.status.data.lastError, null);
    } finally { await s.stop(); }
  });
});

describe('rotation', () => {
  // Certificate rotation: replace the server certificate and the CA/CRL files on a running server.
  /** A STARTTLS listener requiring client certificates, its certificate, key, CA and CRL copied into its folder (to be replaced). */
  async function startRotatingServer() {
    const pki = await makeTestPki();
    const files = {
      'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8'),
      'ca.crt': await readFile(pki.ca.cert, 'utf8'), 'ca.crl': await readFile(pki.crl, 'utf8'),
    };
    const s = await startTestServer({
      files,
      config: `
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ./server.crt, key: ./server.key, clientCertificates: require, caFiles: [./ca.crt], crlFiles: [./ca.crl] }
    limits: { greetingDelayMs: 0 }
`,
    });
    const ca = files['ca.crt'];
    const bob = { cert: await readFile(pki.clients.bob.cert, 'utf8'), key: await readFile(pki.clients.bob.key, 'utf8') };
    return { pki, files, s, ca, bob };
  }

  test('new handshakes use the rotated server certificate, CA and CRL; a newly revoked certificate is refused', async () => {
    const { pki, files, s, ca, bob } = await startRotatingServer();
    const handshake = async (): Promise<{ serverFingerprint: string; reply: string }> => {
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.read();
      await c.command('EHLO x.example');
      const tls: TLSSocket = await c.starttls({ ca, ...bob });
      const fp = new X509Certificate(tls.getPeerCertificate(false).raw).fingerprint256;
      // The first reply tells: a 421 the server sent right after the handshake, or the answer to EHLO.
      const reply = await c.command('EHLO x.example');
      const text = reply.code === 421 ? reply.text : reply.lines[0]!;
      c.destroy();
      return { serverFingerprint: fp, reply: text };
    };
    try {
      // before: bob is trusted
      const before = await handshake();
      assert.match(before.reply, /^250-/);
      // rotate: a new server certificate (same CA), and a CRL that now revokes bob
      const authority = await loadAuthority(ca, await readFile(pki.ca.key, 'utf8'));
      const server2 = await issueServerCertificate(authority, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' });
      const reloaded = new Promise((resolve) => s.reloader.onReload(resolve));
      await writeFile(join(s.dir, 'server.key.new'), server2.key);
      await writeFile(join(s.dir, 'server.crt'), server2.cert + ca);
      await copyFile(join(s.dir, 'server.key.new'), join(s.dir, 'server.key'));
      await writeFile(join(s.dir, 'ca.crl'), await createCrl(authority, [{ serial: pki.clients.revoked.serial }, { serial: pki.clients.bob.serial }]));
      const outcome = await reloaded as { ok: boolean; errors: string[] };
      assert.equal(outcome.ok, true, outcome.errors.join('\n'));
      const after = await handshake();
      assert.notEqual(after.serverFingerprint, before.serverFingerprint, 'new server certificate served');
      assert.equal(after.serverFingerprint, new X509Certificate(server2.cert).fingerprint256);
      assert.match(after.reply, /^421 4\.7\.1 Client certificate not trusted \(revoked\)/);
    } finally { await s.stop(); }
  });

  test('a handshake begun before a CRL reload (STARTTLS answered, no ClientHello yet) is verified with the new CRL', async () => {
    const { pki, files, s, ca, bob } = await startRotatingServer();
    try {
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.read();
      await c.command('EHLO x.example');
      // The server made this connection's TLS socket at STARTTLS, with the context of then; bob is revoked before the handshake.
      await c.starttls({ ca, ...bob }, async () => {
        const reloaded = new Promise((resolve) => s.reloader.onReload(resolve));
        const authority = await loadAuthority(ca, await readFile(pki.ca.key, 'utf8'));
        await writeFile(join(s.dir, 'ca.crl'), await createCrl(authority, [{ serial: pki.clients.revoked.serial }, { serial: pki.clients.bob.serial }]));
        const outcome = await reloaded as { ok: boolean; errors: string[] };
        assert.equal(outcome.ok, true, outcome.errors.join('\n'));
      });
      const reply = await c.command('EHLO x.example');
      assert.match(reply.text, /^421 4\.7\.1 Client certificate not trusted \(revoked\)/);
      c.destroy();
    } finally { await s.stop(); }
  });

  test('a key that does not match the new certificate is refused and the old pair stays in force', async () => {
    const pki = await makeTestPki();
    const files = { 'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8') };
    const s = await startTestServer({
      files,
      config: `
listeners:
  - name: sub
    listen: 127.0.0.1:0
    tls: { mode: implicit, cert: ./server.crt, key: ./server.key }
`,
    });
    try {
      const reloaded = new Promise((resolve) => s.reloader.onReload(resolve));
      await writeFile(join(s.dir, 'server.key'), await readFile(pki.clients.alice.key, 'utf8'));
      const outcome = await reloaded as { ok: boolean; errors: string[] };
      assert.equal(outcome.ok, false);
      assert.match(outcome.errors.join('\n'), /server\.key: private key does not match certificate/);
      const c = await SmtpTestClient.connect(s.port('sub'), { implicitTls: { ca: await readFile(pki.ca.cert, 'utf8') } });
      assert.equal((await c.read()).code, 220);
      await c.quit();
    } finally { await s.stop(); }
  });

  test('tls.mode: to implicit waits for a restart and the listener goes on as it was; starttls to none applies at once', async () => {
    const pki = await makeTestPki();
    const ca = await readFile(pki.ca.cert, 'utf8');
    const s = await startTestServer({
      files: { 'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8') },
      config: `
localDomains: [example.com]
listeners:
  - name: sub
    listen: 127.0.0.1:0
    requireTls: true
    tls: { mode: starttls, cert: ./server.crt, key: ./server.key }
    limits: { greetingDelayMs: 0 }
`,
    });
    const file = join(s.dir, 'postern.yaml');
    const edit = async (from: string, to: string): Promise<{ ok: boolean; pendingRestart: string[] }> => {
      const reloaded = new Promise<{ ok: boolean; pendingRestart: string[] }>((resolve) => s.reloader.onReload(resolve));
      await writeFile(file, (await readFile(file, 'utf8')).replace(from, to));
      return reloaded;
    };
    /** A plain connection: STARTTLS, then a transaction over TLS. */
    const overStarttls = async (): Promise<number> => {
      const c = await SmtpTestClient.connect(s.port('sub'));
      assert.equal((await c.read()).code, 220); // it was 451 and closed: the plain socket was taken for TLS
      assert.match((await c.command('EHLO x.example')).text, /250-STARTTLS/);
      await c.starttls({ ca });
      await c.command('EHLO x.example');
      const code = (await c.command('MAIL FROM:<a@x.example>')).code;
      c.destroy();
      return code;
    };
    try {
      assert.equal(await overStarttls(), 250);
      const implicit = await edit('mode: starttls', 'mode: implicit');
      assert.deepEqual(implicit.pendingRestart, ['listener sub changes tls.mode starttls → implicit']);
      assert.equal(await overStarttls(), 250, 'the listener serves as it started until the restart');
      const back = await edit('mode: implicit', 'mode: starttls');
      assert.deepEqual(back.pendingRestart, []);
      assert.equal(await overStarttls(), 250);
      const none = await edit('requireTls: true\n    tls: { mode: starttls', 'requireTls: false\n    tls: { mode: none');
      assert.deepEqual(none.pendingRestart, [], 'none and starttls share a socket: the change applies at the reload');
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.read();
      assert.doesNotMatch((await c.command('EHLO x.example')).text, /STARTTLS/);
      assert.equal((await c.command('MAIL FROM:<a@x.example>')).code, 250);
      c.destroy();
    } finally { await s.stop(); }
  });
});

describe('script-file-limits', () => {
  /**
   * What a scripts folder may hold that is not a script, on a running server's hot reload: a huge file (a log
   * or an image copied in by mistake, a symlink to one) and a private key (a symlink pointing at the TLS key).
   * Each is refused naming the file, without reading it whole (a 1.5 GB script was read into memory by the
   * digest and again by the loader, in every process) or compiling it (no key material enters an isolate, and
   * nothing of it is shown); the running scripts keep deciding, and a fixed folder applies.
   */
  const MX = configYaml({ localDomains: ['example.com'], listeners: [testListener('mx')] });

  const lastError = (s: TestServer): string => s.reloader.status.data.lastError?.join('\n') ?? '';

  test('a script file of 1.5 GB is refused by its size, unread; the running scripts keep deciding', async () => {
    const s = await startTestServer({ config: MX, scripts: { 'mailfrom.ts': verdictScript('kept') } });
    try {
      const file = join(s.dir, 'scripts', 'rcptto.js');
      await writeFile(file, '');
      await truncate(file, 1500 * 1024 * 1024); // sparse: no disk used, but 1.5 GB to read
      await s.reloader.whenIdle();
      assert.match(lastError(s), new RegExp(`${file}:1:1: is 1572864000 bytes, longer than a policy script may be \\(8388608\\): not read`));
      assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 kept');
      await rm(file);
      await writeFile(join(s.dir, 'scripts', 'mailfrom.ts'), verdictScript('next'));
      await s.reloader.whenIdle();
      assert.equal(lastError(s), '');
      assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 next');
    } finally { await s.stop(); }
  });

  test('a script that is a symlink to a private key is refused as one, nothing of the key shown', async () => {
    const s = await startTestServer({ config: MX, scripts: { 'mailfrom.ts': verdictScript('kept') } });
    try {
      const key = join(s.dir, 'key.pem');
      execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key]);
      const file = join(s.dir, 'scripts', 'rcptto.js');
      await symlink(key, file);
      await s.reloader.whenIdle();
      assert.match(lastError(s), new RegExp(`${file}:1:1: holds a PEM private key \\("PRIVATE KEY" block\\), not a policy script: refused, nothing of it shown`));
      const body = (await readFile(key, 'utf8')).split('\n')[1]!;
      assert.ok(!s.logs.some((l) => JSON.stringify(l).includes(body.slice(0, 20))), 'no key material in the log');
      assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 kept');
      await rm(file);
      await s.reloader.whenIdle();
      assert.equal(lastError(s), '');
    } finally { await s.stop(); }
  });
});

describe('status-at-stop', () => {
  /**
   * status.json at a stop: a graceful stop must not leave its temporary file behind. The queue process of
   * `postern serve` checks its inputs when it is ready (the supervisor tells it to); that check's status write was
   * not waited for, and the exit cut it (test/cluster/stop.test.ts met `.status.json.<pid>.<hex>.tmp` after a
   * SIGTERM on a loaded machine). A check told after the stop began started a write nothing waited for at all.
   */
  test('close() waits for the status writes of the checks before it: the file holds the last count and no temporary file is left', async () => {
    const s = await startTestServer({ config: PLAIN_MX_CONFIG });
    const dataDir = join(s.dir, 'data');
    try {
      // Checks of unchanged inputs (what the supervisor's "reload: change" at ready is): each starts a status write.
      for (let i = 0; i < 20; i++) assert.equal((await s.reloader.reload('change')).changed, false);
      await s.close();
      assert.deepEqual((await readdir(dataDir)).filter((n) => n.endsWith('.tmp')), [], 'no write in flight after close()');
      const written = JSON.parse(await readFile(join(dataDir, 'status.json'), 'utf8')) as { checks: number };
      assert.equal(written.checks, s.reloader.status.data.checks, 'status.json holds the last check');
    } finally {
      await s.stop().catch(() => undefined);
    }
  });

  test('a reload told once the stop began does nothing: no check, no status write after close()', async () => {
    const s = await startTestServer({ config: PLAIN_MX_CONFIG });
    const dataDir = join(s.dir, 'data');
    try {
      await s.close();
      const before = await readFile(join(dataDir, 'status.json'), 'utf8');
      const outcome = await s.reloader.reload('change');
      assert.deepEqual(outcome.errors, ['the server is stopping']);
      assert.equal(await readFile(join(dataDir, 'status.json'), 'utf8'), before, 'nothing written after the stop');
      assert.equal(s.reloader.status.data.checks, JSON.parse(before).checks);
    } finally {
      await s.stop().catch(() => undefined);
    }
  });
});

describe('symlinked-inputs', () => {
  // An input that is a symbolic link to a file in a folder no one watches (a script or a table kept in a repository
  // checkout, linked into the scripts folder or beside postern.yaml): edited in place there, no watched folder has an
  // event about it. Each input file and script is watched on its own too, through the link (path-watches.ts): the edit
  // comes into force by its event, and the once-a-second poll finds nothing the file system did not report. A file
  // written again and again beside postern.yaml (a log) is no input: it makes no reload. One script that cannot be
  // watched on its own (a symlink loop) is reported by its build, and leaves the rest watched.
  /** Until `s`'s reloader has finished `n` more polls of the inputs (each compares their status with the one before). */
  async function polled(s: TestServer, n: number): Promise<void> {
    const until = s.reloader.watchEvents.polls + n;
    while (s.reloader.watchEvents.polls < until) await new Promise((r) => setTimeout(r, 50));
  }

  test('a script and a table linked from a folder no one watches: an edit in place there comes into force by its event', async () => {
    const elsewhere = await mkdtemp(join(tmpdir(), 'postern-checkout-'));
    const links = await mkdtemp(join(tmpdir(), 'postern-links-'));
    await writeFile(join(elsewhere, 'mailfrom.ts'), verdictScript('v1'));
    await writeFile(join(elsewhere, 'senders'), '');
    await symlink(join(elsewhere, 'senders'), join(links, 'senders'));
    const s = await startTestServer({ config: MX_WITH_TABLE_CONFIG.replace('./senders', join(links, 'senders')) });
    try {
      await symlink(join(elsewhere, 'mailfrom.ts'), join(s.dir, 'scripts', 'mailfrom.ts')); // an event in the scripts folder
      while ((await mailFromReply(s)) !== '550 5.7.1 v1') await new Promise((r) => setTimeout(r, 100));
      await s.reloader.whenIdle();
      const reloads = s.reloader.status.data.reloads;

      // A log written beside postern.yaml: events about a file that is no input.
      const others = s.reloader.watchEvents.others;
      for (let i = 0; i < 50; i++) await appendFile(join(s.dir, 'postern.log'), `line ${i}\n`);
      await polled(s, 2);
      assert.ok(s.reloader.watchEvents.others > others, 'the log file\'s events came (and were ignored)');
      assert.equal(s.reloader.status.data.reloads, reloads, 'no reload for a file that is no input');

      await writeFile(join(elsewhere, 'mailfrom.ts'), verdictScript('v2')); // in place, where no watched folder sees it
      while ((await mailFromReply(s)) !== '550 5.7.1 v2') await new Promise((r) => setTimeout(r, 100));
      await polled(s, 3); // a change only a poll found is judged unreported a poll after it
      assert.equal(s.reloader.status.data.watching, null, 'the script\'s edit came as an event, not from the poll');

      await writeFile(join(elsewhere, 'senders'), 'spam@x.example REJECT\n');
      while (s.runtime.generation.tables.get('senders')?.get('spam@x.example') !== 'REJECT') await new Promise((r) => setTimeout(r, 100));
      await polled(s, 3);
      assert.equal(s.reloader.status.data.watching, null, 'the table\'s edit came as an event, not from the poll');

      // A script that cannot be watched on its own (a symlink loop): its build says what is wrong with it, and the
      // folder still reports its entries; changes are still watched (not "unavailable" for the whole server).
      const refusedBefore = s.reloader.status.data.lastError;
      await symlink('rcptto.ts', join(s.dir, 'scripts', 'rcptto.ts'));
      while (s.reloader.status.data.lastError === refusedBefore) await new Promise((r) => setTimeout(r, 100));
      assert.match(String(s.reloader.status.data.lastError), /rcptto\.ts/);
      await rm(join(s.dir, 'scripts', 'rcptto.ts'));
      await writeFile(join(elsewhere, 'mailfrom.ts'), verdictScript('v3'));
      while ((await mailFromReply(s)) !== '550 5.7.1 v3') await new Promise((r) => setTimeout(r, 100));
      await polled(s, 3);
      assert.equal(s.reloader.status.data.watching, null, 'one script that cannot be watched does not stop the watching');
    } finally {
      await s.stop();
      await rm(elsewhere, { recursive: true, force: true });
      await rm(links, { recursive: true, force: true });
    }
  });
});

describe('tls-all-or-nothing', () => {
  /**
   * What a reload does around its swap is honest about which generation runs. A listener's TLS settings change all or nothing. smtp-server's updateSecureContext merged the new options and
   * emptied its context map before OpenSSL read them: a refusal there left the listener without a context, and every
   * later handshake failed. And a reload applied them after swapping in the new generation, so a refusal failed the
   * reload with the new generation in force (reported as reloaded under postern serve). Now what OpenSSL refuses
   * fails the reload before the swap, every listener keeping its certificate. Real TLS handshakes with the listeners
   * tell which certificate each presents; OpenSSL's refusal is real (a key that is no key, given to the real method).
   * And a step after the swap that throws (what the swap does besides putting the generation in force, passing the
   * outcome on: under postern serve a worker's answer to its supervisor) failed the reload with the new generation in
   * force, and left the content recorded as the old one's (the supervisor's convergence view): now each such step is a
   * warning of its own, and the reload stands.
   */
  /** The fingerprint of the certificate `listener` presents to a new STARTTLS handshake. */
  async function presented(s: TestServer, listener: string, ca: string): Promise<string> {
    const c = await SmtpTestClient.connect(s.port(listener));
    try {
      await c.read();
      await c.command('EHLO x.example');
      const tls = await c.starttls({ ca, servername: 'localhost' });
      return new X509Certificate(tls.getPeerCertificate(false).raw).fingerprint256;
    } finally {
      c.destroy();
    }
  }

  test('OpenSSL refusing a listener\'s new TLS settings: the listener keeps its context, and a reload fails before the swap with every listener as it was', { timeout: 120_000 }, async () => {
    const pki = await makeTestPki();
    const ca = await readFile(pki.ca.cert, 'utf8');
    const files = { 'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8') };
    const s = await startTestServer({
      files,
      config: `
listeners:
  - { name: a, listen: 127.0.0.1:0, tls: { mode: starttls, cert: ./server.crt, key: ./server.key }, limits: { greetingDelayMs: 0 } }
  - { name: b, listen: 127.0.0.1:0, tls: { mode: starttls, cert: ./server.crt, key: ./server.key }, limits: { greetingDelayMs: 0 } }
`,
    });
    try {
      const old = new X509Certificate(files['server.crt']).fingerprint256;
      assert.equal(await presented(s, 'a', ca), old);

      // The method alone: a key OpenSSL cannot read. The listener's handshakes go on with the context it had.
      const a = s.servers.get('a')!;
      assert.throws(() => a.updateSecureContext({ key: 'not a key' }));
      assert.equal(await presented(s, 'a', ca), old, 'listener a still hands out its certificate');
      assert.notEqual((a.options as { key?: unknown }).key, 'not a key', 'its options as they were');

      // A reload whose second listener's settings OpenSSL refuses (its key made unreadable on the way in).
      const b = s.servers.get('b')!;
      b.updateSecureContext = (options) => PosternServer.prototype.updateSecureContext.call(b, { ...options, key: 'not a key' });
      const authority = await loadAuthority(ca, await readFile(pki.ca.key, 'utf8'));
      const next = await issueServerCertificate(authority, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], keyType: 'ecdsa' });
      await writeFile(join(s.dir, 'server.crt'), next.cert);
      await writeFile(join(s.dir, 'server.key'), next.key);
      const serial = s.runtime.generation.serial;
      const refused = await s.reloader.reload('test');
      assert.equal(refused.ok, false, 'the reload failed');
      assert.match(refused.errors.join('\n'), /^listener b: OpenSSL refused its TLS settings, which stay as they were: /m);
      assert.equal(s.runtime.generation.serial, serial, 'the running generation stays in force');
      assert.equal(await presented(s, 'a', ca), old, 'listener a, changed first, was given its settings back');
      assert.equal(await presented(s, 'b', ca), old, 'listener b kept its own');

      // OpenSSL taking them: both listeners change. (The same inputs as a refused reload are not built again: the
      // certificate file gets its CA appended, as a full chain.)
      delete (b as { updateSecureContext?: unknown }).updateSecureContext;
      await writeFile(join(s.dir, 'server.crt'), next.cert + ca);
      const reloaded = await s.reloader.reload('test');
      assert.equal(reloaded.ok, true, reloaded.errors.join('\n'));
      const rotated = new X509Certificate(next.cert).fingerprint256;
      assert.equal(await presented(s, 'a', ca), rotated);
      assert.equal(await presented(s, 'b', ca), rotated);
    } finally {
      await s.stop();
    }
  });

  test('a step after the swap that throws: the new generation is in force and the reload stands, the failure a warning of its own', { timeout: 120_000 }, async () => {
    const s = await startTestServer({ config: 'listeners:\n  - { name: a, listen: 127.0.0.1:0, tls: { mode: none } }\n' });
    const stopTelling = s.reloader.onReload(() => { throw new Error('the channel to the supervisor is closed'); });
    try {
      const serial = s.runtime.generation.serial;
      const reloads = s.reloader.status.data.reloads;
      const digest = s.reloader.state().digest;
      // The queue runner told of the new generation (the last thing the swap does), throwing.
      s.queue!.reconfigured = () => { throw new Error('the queue runner could not be told'); };
      const mark = s.logs.length;
      await writeFile(join(s.dir, 'postern.yaml'), `${await readFile(join(s.dir, 'postern.yaml'), 'utf8')}# edited\n`);
      const outcome = await s.reloader.reload('SIGHUP');
      assert.deepEqual([outcome.ok, outcome.errors], [true, []]);
      assert.ok(s.runtime.generation.serial > serial, 'the new generation is in force');
      assert.deepEqual([s.reloader.status.data.lastError, s.reloader.status.data.reloads > reloads], [null, true], 'status: reloaded, not refused');
      assert.notEqual(s.reloader.state().digest, digest, 'the content in force is recorded as the new one');
      const warned = s.logs.slice(mark).filter((l) => l.level === 40).map((l) => String(l.msg));
      assert.ok(warned.some((m) => /^reloaded: generation \d+ is in force, but what its swap does besides .* failed: the queue runner could not be told$/.test(m)), warned.join('\n'));
      assert.ok(warned.some((m) => /could not be passed on \(the channel to the supervisor is closed\); the reload stands all the same$/.test(m)), warned.join('\n'));
      // Nothing left to do: the inputs on disk are the ones in force (a change would be built again).
      delete (s.queue as { reconfigured?: unknown }).reconfigured;
      assert.equal((await s.reloader.reload('change')).changed, false);
    } finally {
      stopTelling();
      await s.stop();
    }
  });
});

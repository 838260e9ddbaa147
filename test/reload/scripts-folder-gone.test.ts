/**
 * A scripts folder that vanishes (a failed deploy, `rm -rf scripts && git clone …` half done, an unmounted
 * volume) or cannot be read must not turn policy off: the reload is refused, the running generation's
 * scripts keep deciding over SMTP, the error names the folder (or file) and the reason, and once the
 * folder is back its scripts take effect. An existing empty folder stays a legitimate "no scripts".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFile, readFile, rm, mkdir, chmod, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { startCluster, greeted, ONE_WORKER } from '../helpers/cluster.ts';
import { ask } from '../../engine/cli/status.ts';
import { statusSocket } from '../../engine/cluster/process-model.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { runCli } from '../helpers/cli.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { mailFromReply, verdictScript } from './helpers.ts';

/** One listener `mx`, its scripts in the top-level folder. */
const MX = configYaml({ localDomains: ['example.com'], listeners: [testListener('mx')] });

/** A scripts folder of its own (outside the server's folder), holding `scripts`. */
async function scriptsFolder(scripts: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-listener-scripts-'));
  for (const [name, text] of Object.entries(scripts)) await writeFile(join(dir, name), text);
  return dir;
}

/** The last reload's errors, one a line ('' when it succeeded). */
function lastError(s: TestServer): string {
  return s.reloader.status.data.lastError?.join('\n') ?? '';
}

/** Waits (on the reloader's own events) until the change on disk has been looked at. */
async function settled(s: TestServer): Promise<void> {
  await s.reloader.whenIdle();
}

test('a listener\'s scripts folder deleted: reload refused naming the folder, its scripts keep deciding, and it applies once the folder is back', async () => {
  const folder = await scriptsFolder({ 'mailfrom.ts': verdictScript('v1') });
  const s = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('mx', { scripts: folder })] }),
  });
  try {
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 v1');
    const generation = s.reloader.state().generation;
    await rm(folder, { recursive: true });
    await settled(s);
    const errors = s.reloader.status.data.lastError;
    assert.ok(errors, 'the reload is refused');
    assert.match(errors.join('\n'), new RegExp(`postern\\.yaml:\\d+:\\d+: listeners\\[0\\]\\.scripts: scripts folder ${folder} does not exist \\(ENOENT\\)`));
    assert.equal(s.reloader.state().generation, generation, 'the running generation stays in force');
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 v1', 'policy is still on');
    assert.ok(s.logs.some((l) => l.level === 50 && String(l.msg).includes(`scripts folder ${folder} does not exist (ENOENT)`)), 'logged as an error');

    // Back (a deploy finishing): picked up by the folder watching, without any other edit.
    await mkdir(folder);
    await writeFile(join(folder, 'mailfrom.ts'), verdictScript('v2'));
    await settled(s);
    assert.equal(s.reloader.status.data.lastError, null);
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 v2');
  } finally {
    await s.stop();
    await rm(folder, { recursive: true, force: true });
  }
});

test('the default scripts folder (no `scripts:` key) deleted after it was read: refused; put back empty: a legitimate "no scripts"', async () => {
  const s = await startTestServer({
    config: MX,
    scripts: { 'mailfrom.ts': verdictScript('default folder') },
  });
  try {
    // The helper names the folder; leave the key out so that it is the default `./scripts` beside postern.yaml.
    const cfg = join(s.dir, 'postern.yaml');
    await writeFile(cfg, (await readFile(cfg, 'utf8')).replace(/^scripts: .*\n/m, ''));
    await settled(s);
    assert.equal(s.reloader.status.data.lastError, null);
    const reloads = s.reloader.status.data.reloads;
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 default folder');

    const folder = join(s.dir, 'scripts');
    await rm(folder, { recursive: true });
    await settled(s);
    assert.match(lastError(s), new RegExp(`postern\\.yaml: scripts: scripts folder ${folder} \\(the default\\) does not exist \\(ENOENT\\), and the running generation's scripts came from it`));
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 default folder');

    await mkdir(folder);
    await settled(s);
    assert.equal(s.reloader.status.data.lastError, null);
    assert.equal(s.reloader.status.data.reloads, reloads + 1, 'the empty folder was swapped in');
    assert.match(await mailFromReply(s.port('mx')), /^250 /, 'no scripts: the built-in rules decide');
  } finally { await s.stop(); }
});

test('a script that is not a readable file (a FIFO, a folder named like a script): refused naming the file, without hanging the reload', async () => {
  const s = await startTestServer({
    config: MX,
    scripts: { 'mailfrom.ts': verdictScript('kept') },
  });
  try {
    const folder = join(s.dir, 'scripts');
    // Opening a FIFO for reading blocks until a writer comes: the digest and the loader must not open it.
    execFileSync('mkfifo', [join(folder, 'rcptto.ts')]);
    await settled(s);
    assert.match(lastError(s), new RegExp(`${join(folder, 'rcptto.ts')}:1:1: cannot read: not a regular file`));
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 kept');

    await rm(join(folder, 'rcptto.ts'));
    await mkdir(join(folder, 'rcptto.ts'));
    await settled(s);
    assert.match(lastError(s), new RegExp(`${join(folder, 'rcptto.ts')}:1:1: cannot read: not a regular file`));

    await rm(join(folder, 'rcptto.ts'), { recursive: true });
    await writeFile(join(folder, 'mailfrom.ts'), verdictScript('edited'));
    await settled(s);
    assert.equal(s.reloader.status.data.lastError, null);
    assert.equal(await mailFromReply(s.port('mx')), '550 5.7.1 edited');
  } finally { await s.stop(); }
});

test('postern serve: a vanished or unreadable scripts folder shows in `postern status` as a refused reload, and mail is still judged by its scripts', async () => {
  const folder = await scriptsFolder({ 'mailfrom.ts': verdictScript('cluster v1') });
  const c = await startCluster({
    // One worker: the refusal is the worker's and the queue process's, and one session asks the verdict.
    config: `${ONE_WORKER}    scripts: ${JSON.stringify(folder)}\n`,
    // Root reads anything: without these capabilities a folder of mode 000 gives the server EACCES, as it would a service user.
    wrap: ['setpriv', '--bounding-set=-dac_override,-dac_read_search'],
  });
  try {
    const cfg = join(c.dir, 'postern.yaml');
    const status = (): ReturnType<typeof runCli> => runCli(['status', '--config', cfg]);
    // Waited for in this process, on the answer `postern status` prints (engine/cli/status.ts), and then the command
    // run once: a command started at every poll was most of this test's CPU time.
    const reloadError = async (): Promise<string[] | null> => (await ask<{ lastError: string[] | null }>(statusSocket(c.dataDir), '/status')).lastError;
    const refusedByStatus = async (what: string): Promise<Awaited<ReturnType<typeof runCli>>> => {
      await c.waitFor(what, async () => (await reloadError()) !== null);
      const r = await status();
      assert.equal(r.code, 2, `${what}: ${r.stdout}${r.stderr}`);
      return r;
    };
    const reloadedByStatus = async (what: string): Promise<void> => {
      await c.waitFor(what, async () => (await reloadError()) === null);
      const r = await status();
      assert.equal(r.code, 0, `${what}: ${r.stdout}${r.stderr}`);
    };
    await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
    await rm(folder, { recursive: true });
    const refused = await refusedByStatus('postern status to report the refused reload');
    assert.match(refused.stdout, new RegExp(`listeners\\[0\\]\\.scripts: scripts folder ${folder} does not exist \\(ENOENT\\)`));
    const client = await greeted(c);
    assert.equal((await client.command('MAIL FROM:<x@y.example>')).text, '550 5.7.1 cluster v1');
    await client.quit();

    await mkdir(folder);
    await writeFile(join(folder, 'mailfrom.ts'), verdictScript('cluster v2'));
    await reloadedByStatus('postern status to report the reload');
    const verdict = async (): Promise<string> => {
      const cl = await greeted(c);
      const r = await cl.command('MAIL FROM:<x@y.example>');
      await cl.quit();
      return r.text;
    };
    await c.waitFor('the new scripts to decide', async () => await verdict() === '550 5.7.1 cluster v2');

    // Unreadable: a permission change may come with no file-system event, so SIGHUP asks for the reload.
    await chmod(folder, 0);
    process.kill(c.proc.pid!, 'SIGHUP');
    const locked = await refusedByStatus('postern status to report the unreadable folder');
    assert.match(locked.stdout, new RegExp(`listeners\\[0\\]\\.scripts: scripts folder ${folder} cannot be read \\(EACCES\\)`));
    assert.equal(await verdict(), '550 5.7.1 cluster v2');
    await chmod(folder, 0o755);
    process.kill(c.proc.pid!, 'SIGHUP');
    await c.waitFor('the status to report the reload', async () => (await reloadError()) === null); // its exit code 0: checked above
    assert.equal(await verdict(), '550 5.7.1 cluster v2');
  } finally {
    await c.stop();
    await rm(folder, { recursive: true, force: true });
  }
});

test('start and postern check: a named scripts folder that does not exist (or cannot be read) is an error naming file, key and path; the default one missing is "no scripts"', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-scripts-missing-'));
  try {
    const cfg = join(dir, 'postern.yaml');
    const listener = `listeners:\n  - name: mx\n    listen: 127.0.0.1:0\n`;
    await writeFile(cfg, `dataDir: ./data\nlocalDomains: [example.com]\n${listener}    scripts: ./nowhere\n`);
    const check = await runCli(['check', '--config', cfg]);
    assert.equal(check.code, 1);
    // (Warnings aside: without a recipient table and its rcptto script unread, the local domains accept anyone.)
    const error = check.stderr.trim().split('\n').filter((l) => !l.startsWith('warning: ')).join('\n');
    assert.equal(error, `${cfg}:6:14: listeners[0].scripts: scripts folder ${join(dir, 'nowhere')} does not exist (ENOENT): put it back (an empty folder means no scripts)`);
    const serve = await runCli(['serve', '--config', cfg], { timeoutMs: 60_000 });
    assert.notEqual(serve.code, 0);
    assert.ok((serve.stdout + serve.stderr).includes(error), `serve says what check says:\n${serve.stdout}${serve.stderr}`);

    // The top-level key written: the same.
    await writeFile(cfg, `dataDir: ./data\nscripts: ./policy\nlocalDomains: [example.com]\n${listener}`);
    assert.match((await runCli(['check', '--config', cfg])).stderr, /^.*postern\.yaml:2:10: scripts: scripts folder .*\/policy does not exist \(ENOENT\)/m);

    // Left out: the documented default, a folder that may be missing (the built-in rules apply).
    await writeFile(cfg, `dataDir: ./data\nlocalDomains: [example.com]\n${listener}`);
    assert.equal((await runCli(['check', '--config', cfg])).code, 0);
    // The embedded default (`npm start`, no --config) names `./scripts` for show: missing in its working directory, it is no error.
    const embedded = await runCli(['check'], { cwd: await mkdtemp(join(dir, 'cwd-')) });
    assert.doesNotMatch(embedded.stderr, /scripts folder/, embedded.stderr);

    // Unreadable (EACCES): root reads anything, so the check runs without the capabilities that bypass permissions.
    await mkdir(join(dir, 'locked'));
    await writeFile(join(dir, 'locked', 'mailfrom.ts'), verdictScript('x'));
    await writeFile(cfg, `dataDir: ./data\nscripts: ./locked\nlocalDomains: [example.com]\n${listener}`);
    const unprivileged = async (): Promise<string> => {
      const main = new URL('../../engine/cli/main.ts', import.meta.url).pathname;
      try {
        execFileSync('setpriv', ['--bounding-set=-dac_override,-dac_read_search', process.execPath, main, 'check', '--config', cfg], { stdio: 'pipe', env: { ...process.env, NODE_NO_WARNINGS: '1' } });
        return '';
      } catch (err) { return String((err as { stderr: Buffer }).stderr); }
    };
    await chmod(join(dir, 'locked', 'mailfrom.ts'), 0);
    assert.match(await unprivileged(), new RegExp(`${join(dir, 'locked', 'mailfrom.ts')}:1:1: cannot read: EACCES`));
    await chmod(join(dir, 'locked'), 0);
    assert.match(await unprivileged(), new RegExp(`postern\\.yaml:2:10: scripts: scripts folder ${join(dir, 'locked')} cannot be read \\(EACCES\\)`));
  } finally {
    await chmod(join(dir, 'locked'), 0o755).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * Private Postfix instances and smtp-sink for interoperability tests: a temp folder with its own main.cf,
 * master.cf, queue and log, started with an absolute -c path, no DNS (smtp_host_lookup = native), every
 * command under `timeout`. Skipped without Postfix unless POSTERN_REQUIRE_CLIENTS is set.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
export { freePort } from './free-port.ts';
import { freePort } from './free-port.ts';

const POSTFIX = '/usr/sbin/postfix';
const SMTP_SINK = '/usr/sbin/smtp-sink';

/** `{ skip }` for node:test: a missing Postfix is a skip on a developer machine and a failure under CI. */
export function needsPostfix(): { skip: string | false } {
  const found = existsSync(POSTFIX) && existsSync(SMTP_SINK) && spawnSync('sh', ['-c', 'command -v timeout']).status === 0;
  if (!found && process.env.POSTERN_REQUIRE_CLIENTS) throw new Error(`${POSTFIX} (and smtp-sink) are not installed`);
  if (!found) return { skip: 'Postfix not installed' };
  // `postfix start` is reserved for the superuser, private instances included.
  return { skip: process.getuid?.() === 0 ? false : 'private Postfix instances need root' };
}

/** A free TCP port on 127.0.0.1 (Postfix needs ports in master.cf). */

function run(cmd: string, args: string[], timeoutS = 30): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('timeout', [String(timeoutS), cmd, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

const SERVICES = `
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       1       1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export interface PostfixInstance {
  dir: string;
  etc: string;
  /** The instance's log so far. */
  log(): Promise<string>;
  /** Wait until the log matches. */
  waitLog(re: RegExp, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

/** Start a private instance. `main` lines are appended to the common skeleton; `master` lines to the services. */
export async function startPostfix(name: string, main: Record<string, string>, master: string[]): Promise<PostfixInstance> {
  const dir = await mkdtemp(join(tmpdir(), `postern-pf-${name}-`));
  await chmod(dir, 0o755); // Postfix daemons (user postfix) walk into the queue below
  const etc = join(dir, 'etc');
  for (const d of ['etc', 'spool', 'data']) await mkdir(join(dir, d));
  const pf = spawnSync('id', ['-u', 'postfix']);
  const uid = Number(pf.stdout.toString().trim());
  if (Number.isFinite(uid) && pf.status === 0) await chown(join(dir, 'data'), uid, 0);
  const cf: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: join(dir, 'spool'),
    data_directory: join(dir, 'data'),
    meta_directory: '/etc/postfix',
    syslog_name: `pf-${name}`,
    maillog_file: join(dir, 'maillog'),
    maillog_file_prefixes: dir,
    myhostname: `pf-${name}.localhost`,
    mydestination: '',
    local_recipient_maps: '',
    alias_maps: '',
    alias_database: '',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.1/32',
    smtp_host_lookup: 'native',
    smtp_dns_support_level: 'disabled',
    // Tests want answers in seconds, not queue-manager minutes.
    queue_run_delay: '1s', minimal_backoff_time: '1s', maximal_backoff_time: '2s',
    ...main,
  };
  await writeFile(join(etc, 'main.cf'), Object.entries(cf).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n');
  await writeFile(join(etc, 'master.cf'), master.join('\n') + '\n' + SERVICES);
  const started = await run(POSTFIX, ['-c', etc, 'start']);
  if (started.code !== 0) {
    const log = await readFile(join(dir, 'maillog'), 'utf8').catch(() => '');
    await rm(dir, { recursive: true, force: true });
    throw new Error(`postfix ${name} did not start (${started.code}): ${started.stderr}\n${log}`);
  }
  const log = (): Promise<string> => readFile(join(dir, 'maillog'), 'utf8').catch(() => '');
  return {
    dir, etc, log,
    async waitLog(re, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = await log();
        if (re.test(text)) return text;
        if (Date.now() > deadline) throw new Error(`pf-${name}: no ${re} in the log within ${timeoutMs} ms:\n${text}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async stop() {
      const pidFile = join(dir, 'spool', 'pid', 'master.pid');
      const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
      await run(POSTFIX, ['-c', etc, 'stop'], 20);
      const deadline = Date.now() + 10_000;
      while (pid && Date.now() < deadline && processAlive(pid)) await new Promise((r) => setTimeout(r, 100));
      if (pid && processAlive(pid)) process.kill(pid, 'SIGKILL');
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function processAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

export interface SmtpSink {
  port: number;
  /** Each dumped transaction: the file's text (X-Client-Addr …, X-Rcpt-Args, then the message). */
  messages(): Promise<string[]>;
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

/** Postfix's smtp-sink on 127.0.0.1, dumping every message to a file. */
export async function startSmtpSink(): Promise<SmtpSink> {
  const dir = await mkdtemp(join(tmpdir(), 'postern-smtp-sink-'));
  await chmod(dir, 0o777);
  const port = await freePort();
  const child: ChildProcess = spawn('timeout', ['300', SMTP_SINK, '-u', 'postfix', '-d', `${dir}/%H%M%S.`, `127.0.0.1:${port}`, '100'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  // Wait until it listens: by connecting. (Probing by binding the port itself held it, now and then, at the
  // moment smtp-sink bound it on a loaded machine: smtp-sink exited on EADDRINUSE and never came up.)
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`smtp-sink exited (${child.exitCode}) before it listened: ${stderr.trim()}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error(`smtp-sink did not listen on ${port} within 30 s: ${stderr.trim()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const messages = async (): Promise<string[]> => {
    const names = (await readdir(dir)).sort();
    return Promise.all(names.map((n) => readFile(join(dir, n), 'utf8')));
  };
  return {
    port, messages,
    async waitFor(re, timeoutMs = 20_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const found = (await messages()).find((m) => re.test(m));
        if (found) return found;
        if (Date.now() > end) throw new Error(`smtp-sink: no message matching ${re} within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Makes a fixture of test/upgrade/fixtures/: the data directory an earlier tree of this repository left when it
 * was killed with mail in its queue, and (trees with `postern pki`) a CA folder and pin table its commands wrote.
 * Run once per tree, by hand, not by the tests (CI cannot check out old trees):
 *
 *   git worktree add --detach /tmp/old <commit> && ln -s "$PWD/node_modules" /tmp/old/node_modules
 *   node test/upgrade/generate-fixture.ts /tmp/old test/upgrade/fixtures/<commit>
 *
 * The old tree accepts messages over SMTP and tries them against a next hop that defers some (451), delivers
 * others, and never answers the end of DATA for the last ones (mid-delivery); `postern queue hold` holds two;
 * then its whole process group is killed (SIGKILL). What is kept: the spools as the old tree left them, less
 * what belongs to the dead processes or to this machine (locks naming their PIDs, the 4 MiB reserve, status
 * files, the socket) and the zeros written ahead of journal records (readers stop at them). expected.json says
 * which messages the next release must deliver, which it must not deliver again, and which stay held.
 */
import { spawn, execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { freePort } from '../helpers/free-port.ts';
import { until } from '../helpers/wait.ts';

const [oldTree, out] = process.argv.slice(2);
if (!oldTree || !out) throw new Error('usage: generate-fixture.ts OLD_TREE OUT_DIR');
const NODE = new URL('../../node_modules/.bin/node', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'postern-fixture-'));
const dataDir = join(work, 'data');
const port = await freePort();
const cluster = existsSync(join(oldTree, 'engine/cluster'));
const hasPki = existsSync(join(oldTree, 'engine/cli/pki.ts'));
const hasHold = readFileSync(join(oldTree, 'engine/cli/queue.ts'), 'utf8').includes('hold');

// The next hop: recipients defer* get 451; once `stalling`, the end of DATA is never answered.
const delivered: string[] = [];
let stalling = false;
let stalled = 0;
const hop = new SMTPServer({
  authOptional: true, disabledCommands: ['STARTTLS'], logger: false,
  onRcptTo(address, _s, cb) { cb(address.address.startsWith('defer') ? Object.assign(new Error('try later'), { responseCode: 451 }) : undefined); },
  onData(stream, _s, cb) {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      if (stalling) { stalled++; return; }
      delivered.push(/Subject: (\S+)/.exec(Buffer.concat(chunks).toString())![1]!);
      cb();
    });
  },
});
hop.on('error', () => undefined);
const hopPort = await freePort();
await new Promise<void>((r) => hop.listen(hopPort, '127.0.0.1', r));

mkdirSync(join(work, 'scripts'));
const config = join(work, 'postern.yaml');
writeFileSync(config, `dataDir: ${dataDir}
scripts: ${join(work, 'scripts')}
${cluster ? 'workers: 2\n' : ''}${readFileSync(join(oldTree, 'engine/config/schema.ts'), 'utf8').includes('workerChoice') ? 'workerChoice: roundRobin\n' : ''}localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:${port}
    reverseDns: false
    limits: { greetingDelayMs: 0 }
delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${hopPort} } }
  tls: { mode: none }
  scanIntervalMs: 200
  retrySchedule: [1]
`);
const cli = (...args: string[]): string => execFileSync(NODE, [join(oldTree, 'engine/cli/main.ts'), ...args], { cwd: work, encoding: 'utf8', env: { ...process.env, NODE_NO_WARNINGS: '1' } });

const server = spawn(NODE, [join(oldTree, 'engine/cli/main.ts'), 'serve', '--config', config], { cwd: work, detached: true, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, NODE_NO_WARNINGS: '1' } });
const connect = async (): Promise<SmtpTestClient> => {
  const c = await SmtpTestClient.connect(port);
  await c.read(30_000);
  await c.command('EHLO client.test', 30_000);
  return c;
};
await until('the old server to listen', async () => { try { (await connect()).destroy(); return true; } catch { return false; } }, { timeoutMs: 60_000 });

const ids = new Map<string, string>();
async function send(subject: string, to: string, bodyLines = 1): Promise<void> {
  const c = await connect();
  try {
    const r = await c.sendMail('sender@example.test', [to], `Subject: ${subject}\r\n\r\n${`${subject} ${'y'.repeat(990)}\r\n`.repeat(bodyLines)}`);
    if (r.code !== 250) throw new Error(`${subject}: ${r.text}`);
    ids.set(subject, /queued as ([0-9a-z]+)/.exec(r.text)![1]!);
  } finally { c.destroy(); }
}
for (let i = 0; i < 3; i++) await send(`done${i}`, `ok${i}@example.test`);
for (let i = 0; i < 4; i++) await send(`deferred${i}`, `defer${i}@example.test`);
await send('large0', 'deferlarge@example.test', 1060); // over the journal's 1 MiB: a message file of its own
if (hasHold) for (let i = 0; i < 2; i++) await send(`held${i}`, `deferheld${i}@example.test`);
await until('the first ones delivered', () => delivered.length === 3, { timeoutMs: 60_000 });
await new Promise((r) => setTimeout(r, 2500)); // two retries: attempts and state files
if (hasHold) cli('queue', 'hold', ids.get('held0')!, ids.get('held1')!, '--config', config);
stalling = true;
for (let i = 0; i < 3; i++) await send(`inflight${i}`, `inflight${i}@example.test`);
await until('a delivery mid-DATA', () => stalled > 0, { timeoutMs: 60_000 });
process.kill(-server.pid!, 'SIGKILL');
await new Promise((r) => (server.exitCode !== null || server.signalCode !== null ? r(null) : server.once('exit', r)));
hop.close(() => undefined);

if (hasPki) {
  const ca = join(work, 'ca');
  // Ten years, so that the fixture's CRL and certificates outlive the tests (a CRL past its next update fails the CA's every certificate).
  cli('pki', 'init', '--dir', ca, '--name', 'Upgrade Fixture CA', '--crl-days', '3650');
  for (const device of ['laptop', 'phone']) cli('pki', 'issue', 'alice@example.test', '--device', device, '--days', '3650', '--dir', ca);
  cli('pki', 'revoke', 'alice@example.test', '--device', 'phone', '--reason', 'keyCompromise', '--dir', ca);
  // Two devices outside the CA, known by their key: bob's stays pinned, eve's is removed again.
  const pins = join(work, 'pins');
  writeFileSync(pins, '# pins managed by postern pins\n');
  // Self-signed, for ten years: the server's (for the tests' listeners) and the two devices'.
  for (const who of ['server', 'bob', 'eve']) {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${who === 'server' ? 'localhost' : `${who}-tablet`}`, '-days', '3650',
      '-keyout', join(work, `${who}.key`), '-out', join(work, `${who}.crt`)], { stdio: 'ignore' });
  }
  writeFileSync(join(work, 'pins.yaml'), `dataDir: ${dataDir}\nscripts: ${join(work, 'scripts')}\ntables: { pins: ${pins} }\nlisteners:\n  - name: pinned\n    listen: 127.0.0.1:0\n    tls: { mode: starttls, cert: ${join(work, 'server.crt')}, key: ${join(work, 'server.key')}, clientCertificates: request }\n    certificateIdentity: { pins: pins }\n`);
  for (const who of ['bob', 'eve']) {
    cli('pins', 'add', `${who}@example.test`, join(work, `${who}.crt`), '--device', 'tablet', '--config', join(work, 'pins.yaml'));
  }
  cli('pins', 'remove', 'eve@example.test', '--device', 'tablet', '--config', join(work, 'pins.yaml'));
}

// What belongs to the dead processes or this machine is left out (see the top).
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const skip = (rel: string): boolean => /(^|\/)(postern\.lock|reserve|rescan|cluster\.json|status\.json|postern\.sock)$/.test(rel) || /^data\/fences\/running-/.test(rel)
  || /^(postern|pins)\.yaml$|^scripts$/.test(rel);
cpSync(work, out, { recursive: true, filter: (src) => !skip(relative(work, src)) });
for (const file of readdirSync(out, { recursive: true, encoding: 'utf8' })) {
  const path = join(out, file);
  if (!file.endsWith('.seg') || !statSync(path).isFile()) continue;
  const bytes = readFileSync(path);
  let end = bytes.length;
  while (end > 0 && bytes[end - 1] === 0) end--;
  writeFileSync(path, bytes.subarray(0, end));
}
const subjects = (prefix: string): string[] => [...ids.keys()].filter((s) => s.startsWith(prefix));
writeFileSync(join(out, 'expected.json'), `${JSON.stringify({
  commit: execFileSync('git', ['-C', oldTree, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim(),
  // Delivered and marked done by the old tree: never again.
  deliveredBefore: delivered.filter((s) => s.startsWith('done')),
  // Acknowledged and not finished (deferred, or under way at the kill): at least once.
  toDeliver: [...subjects('deferred'), ...subjects('large'), ...subjects('inflight')],
  held: subjects('held'),
  pki: hasPki,
}, null, 2)}\n`);
rmSync(work, { recursive: true, force: true });
console.log(`${out}: ${ids.size} messages`);
process.exit(0);

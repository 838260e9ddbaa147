/**
 * One client through a real HAProxy (Debian's, `mode tcp`) is one client however HAProxy spells it: on an
 * IPv4 frontend it names the client as IPv4 (v2 AF_INET, v1 TCP4); on a dual-stack `[::]` frontend the
 * same client reaches HAProxy as ::ffff:a.b.c.d, and HAProxy names it so (v2 AF_INET6, v1 TCP6). A client
 * holding its one connection (maxConnectionsPerIp: 1) through one frontend must not get a second through
 * another, and scripts see it as one address. Each client binds its own 127.0.0.x (not HAProxy's address).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { needs } from '../helpers/example.ts';
import { freePort } from '../helpers/free-port.ts';
import { until } from '../helpers/wait.ts';

const HAPROXY = '/usr/sbin/haproxy';
const opts = needs(HAPROXY);
let s: TestServer;
let haproxy: ChildProcess | null = null;
const ports: Record<string, number> = {};

before(async () => {
  if (opts.skip) return;
  s = await startTestServer({
    config: configYaml({
      localDomains: ['example.com'],
      listeners: [testListener('mx', { reverseDns: false, proxyProtocol: { trusted: ['127.0.0.1'] }, limits: { maxConnectionsPerIp: 1 } })],
    }),
    scripts: { 'mailfrom.ts': `export default (ctx) => accept({ text: 'client ' + ctx.connection.remoteAddress });` },
  });
  const frontends = [['v4v2', '127.0.0.1', 'send-proxy-v2'], ['v4v1', '127.0.0.1', 'send-proxy'], ['dualv2', ':::', 'send-proxy-v2'], ['dualv1', ':::', 'send-proxy']] as const;
  let cfg = 'global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n';
  for (const [name, host, send] of frontends) {
    ports[name] = await freePort();
    const bind = host === ':::' ? `:::${ports[name]} v4v6` : `${host}:${ports[name]}`;
    cfg += `frontend ${name}\n  bind ${bind}\n  default_backend b_${name}\nbackend b_${name}\n  server mx 127.0.0.1:${s.port('mx')} ${send}\n`;
  }
  await writeFile(join(s.dir, 'haproxy.cfg'), cfg);
  haproxy = spawn(HAPROXY, ['-db', '-f', join(s.dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  haproxy.stderr!.on('data', (d: Buffer) => { out += d; });
  await until('haproxy listening', async () => {
    if (haproxy!.exitCode !== null) throw new Error(`haproxy exited:\n${out}`);
    const all = await Promise.all(Object.values(ports).map((p) => probe(p)));
    return all.every(Boolean);
  }, { timeoutMs: 30_000 });
});

after(async () => {
  haproxy?.kill('SIGTERM');
  await s?.stop();
});

/** Whether something listens on `port` (a bare connect; HAProxy's backend gets a connection it drops). */
async function probe(port: number): Promise<boolean> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port }, () => { c.destroy(); resolve(true); });
    c.on('error', () => resolve(false));
  });
}

test('a client holding its one connection through one frontend is refused through every other', opts, async () => {
  const pairs = [['v4v2', 'dualv2'], ['dualv1', 'v4v1'], ['dualv2', 'v4v1'], ['v4v2', 'dualv1']] as const;
  for (const [i, [held, other]] of pairs.entries()) {
    const client = `127.0.0.${2 + i}`; // one client per pair: none waits for the slot of the one before
    const first = await SmtpTestClient.connect(ports[held]!, { localAddress: client });
    await first.hello();
    assert.equal((await first.command('MAIL FROM:<a@example.org>')).text, `250 2.1.0 client ${client}`, held);
    const second = await SmtpTestClient.connect(ports[other]!, { localAddress: client });
    assert.match((await second.read()).text, /^421 /, `${held} then ${other}`);
    second.destroy();
    await first.quit();
  }
});

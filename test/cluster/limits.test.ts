// Per-IP and per-listener limits hold for the sum over worker processes (on PROXY protocol listeners too):
// connections are handed to the two workers in turn, so a limit counted per process would let through what
// the server as a whole must refuse. One server for the file: each test has a listener (and its limits) of its
// own, and per-IP and listener counts are kept per listener.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { proxyV1 } from '../helpers/proxy-header.ts';
import { startCluster, workerPid, type ClusterProcess } from '../helpers/cluster.ts';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

let c: ClusterProcess;
let pki: Awaited<ReturnType<typeof makeTestPki>>;
before(async () => {
  pki = await makeTestPki();
  // roundRobin: consecutive connections go to the two workers in turn (proxyProtocol's `lb` too), so a limit
  // counted per process would let through what the server must refuse.
  c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
users: ./users
localDomains: [example.test]
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
  - name: conn
    listen: 127.0.0.1:{PORT:conn}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 3 }
  - name: idle
    listen: 127.0.0.1:{PORT:idle}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 4, maxConnectionsPerIp: 4 }
  - name: lb
    listen: 127.0.0.1:{PORT:lb}
    reverseDns: false
    proxyProtocol: { trusted: [127.0.0.0/8] }
    limits: { greetingDelayMs: 0, maxConnections: 3 }
  - name: tls
    listen: 127.0.0.1:{PORT:tls}
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: 2, authFailuresBeforeDelay: 10 }
  - name: mx
    listen: 127.0.0.1:{PORT:mx}
    reverseDns: false
    limits: { greetingDelayMs: 0, authFailuresPerIp: 2 }
`,
    files: { users: `alice:${await hashPassword('right')}\n` },
  });
  await workerPid(c, 0);
  await workerPid(c, 1);
});
after(() => c?.stop());

test('maxConnectionsPerIp counts the connections of every worker', async () => {
  const open: SmtpTestClient[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const client = await SmtpTestClient.connect(c.port('in'));
      assert.equal((await client.read(30_000)).code, 220);
      open.push(client);
    }
    // Two open, one on each worker: the third (back on the first worker) is over the limit of the server.
    const third = await SmtpTestClient.connect(c.port('in'));
    open.push(third);
    assert.match((await third.read(30_000)).text, /^421 4\.7\.0 Too many connections from your address/);
    open.pop()!.destroy();
    // A slot freed on one worker is free for the whole server.
    await open.shift()!.quit();
    await c.waitFor('a slot again', async () => {
      const client = await SmtpTestClient.connect(c.port('in'));
      const r = await client.read(30_000);
      if (r.code === 220) open.push(client); else client.destroy();
      return r.code === 220;
    });
  } finally {
    for (const o of open) o.destroy();
  }
});

test('maxConnections counts the connections of every worker', async () => {
  const open: SmtpTestClient[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const client = await SmtpTestClient.connect(c.port('conn'), { localAddress: `127.0.0.${2 + i}` });
      open.push(client);
      assert.equal((await client.read(30_000)).code, 220);
    }
    // Two on one worker, one on the other: a fourth from yet another address is over the listener's limit.
    const fourth = await SmtpTestClient.connect(c.port('conn'), { localAddress: '127.0.0.9' });
    open.push(fourth);
    assert.match((await fourth.read(30_000)).text, /^421 4\.7\.0 \S+ Too many connected clients/);
    open.pop()!.destroy();
    await open.shift()!.quit();
    await c.waitFor('a place again', async () => {
      const client = await SmtpTestClient.connect(c.port('conn'), { localAddress: '127.0.0.9' });
      const r = await client.read(30_000);
      if (r.code === 220) open.push(client); else client.destroy();
      return r.code === 220;
    });
  } finally {
    for (const o of open) o.destroy();
  }
});

test('maxConnections held by one address: a worker closes one of that address\'s idle connections for another address', async () => {
  const open: SmtpTestClient[] = [];
  try {
    for (let i = 0; i < 4; i++) {
      const client = await SmtpTestClient.connect(c.port('idle'), { localAddress: '127.0.0.2' });
      open.push(client);
      assert.equal((await client.read(30_000)).code, 220);
      assert.equal((await client.command('EHLO holder.example', 30_000)).code, 250);
    }
    // Two on each worker, all of 127.0.0.2: another address is greeted, and the worker it went to closed one of them.
    const other = await SmtpTestClient.connect(c.port('idle'), { localAddress: '127.0.0.3' });
    assert.equal((await other.read(30_000)).code, 220, other.transcript.join('\n'));
    await c.waitFor('one of 127.0.0.2 closed', () => open.filter((o) => o.closed).length === 1);
    const closed = open.find((o) => o.closed)!;
    assert.match((await closed.repliesUntilClosed()).at(-1)!.text, /^421 4\.7\.0 \S+ Too many connected clients, this idle connection is closed for another client$/);
    open.push(other);
  } finally {
    for (const o of open) o.destroy();
  }
});

test('maxConnections counts the connections of every worker on a proxyProtocol listener too', async () => {
  const open: SmtpTestClient[] = [];
  /** A connection through the balancer (127.0.0.1) for client 192.0.2.<n>: each its own address, so no per-IP limit. */
  const proxied = (n: number): Promise<SmtpTestClient> => SmtpTestClient.connect(c.port('lb'), { proxyHeader: proxyV1(`192.0.2.${n}`, 40_000 + n) });
  try {
    for (let i = 0; i < 3; i++) {
      const client = await proxied(i + 1);
      open.push(client);
      assert.equal((await client.read(30_000)).code, 220);
    }
    // Two on one worker, one on the other: counted per worker, a fourth would be under 3 on either.
    const fourth = await proxied(9);
    open.push(fourth);
    assert.match((await fourth.read(30_000)).text, /^421 4\.7\.0 \S+ Too many connected clients/);
    open.pop()!.destroy();
    await open.shift()!.quit();
    await c.waitFor('a place again', async () => {
      const client = await proxied(9);
      const r = await client.read(30_000);
      if (r.code === 220) open.push(client); else client.destroy();
      return r.code === 220;
    });
  } finally {
    for (const o of open) o.destroy();
  }
});

test('STARTTLS sessions give their slot back (STARTTLS drops the raw socket\'s listeners): many more sessions than the limit, one after another', async () => {
  const ca = await readFile(pki.ca.cert, 'utf8');
  /** A new connection once one gets a slot (a closed one's slot comes back through the supervisor). */
  const admitted = (): Promise<SmtpTestClient> => c.waitFor('a slot', async () => {
    const client = await SmtpTestClient.connect(c.port('tls'));
    if ((await client.read(30_000)).code === 220) return client;
    client.destroy();
    return null;
  });
  for (let i = 0; i < 6; i++) {
    const client = await admitted();
    await client.command('EHLO client.test', 30_000);
    if (i % 2) {
      // Reset by the client in the middle of the handshake.
      assert.equal((await client.command('STARTTLS', 30_000)).code, 220);
      client.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01]));
      client.socket.resetAndDestroy();
    } else {
      await client.starttls({ ca });
      await client.command('EHLO client.test', 30_000);
      await client.quit();
    }
  }
  // Every slot back: two at once again.
  const both = [await admitted(), await admitted()];
  for (const b of both) b.destroy();
});

test('authFailuresPerIp counts the failures on every worker; the MX without AUTH still takes the address\'s mail', async () => {
  // One failure on each worker (consecutive connections alternate between them), each connection open.
  const clients: SmtpTestClient[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const client = await SmtpTestClient.connect(c.port('sub'));
      assert.equal((await client.read(30_000)).code, 220);
      await client.command('EHLO client.test', 30_000);
      assert.equal((await client.command(`AUTH PLAIN ${b64('\0alice\0wrong')}`, 30_000)).code, 535);
      clients.push(client);
    }
    const next = await SmtpTestClient.connect(c.port('sub'));
    clients.push(next);
    assert.match((await next.read(30_000)).text, /^421 4\.7\.0 Too many authentication failures/);
    // On both workers (round robin): the MX has no AUTH, so nothing to refuse the address for.
    for (let i = 0; i < 2; i++) {
      const mx = await SmtpTestClient.connect(c.port('mx'));
      clients.push(mx);
      assert.equal((await mx.read(30_000)).code, 220);
      await mx.command('EHLO client.test', 30_000);
      assert.equal((await mx.sendMail('sender@elsewhere.example', ['postmaster@example.test'])).code, 250);
    }
  } finally {
    for (const cl of clients) cl.destroy();
  }
});

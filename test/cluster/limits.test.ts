// Per-IP and per-listener limits hold for the sum over worker processes (on PROXY protocol listeners too):
// connections are handed to the two workers in turn, so a limit counted per process would let through what
// the server as a whole must refuse.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { proxyV1 } from '../helpers/proxy-header.ts';
import { startCluster, workerPid } from '../helpers/cluster.ts';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

test('maxConnectionsPerIp counts the connections of every worker', async () => {
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
`,
  });
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    const open: SmtpTestClient[] = [];
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
    for (const o of open) o.destroy();
  } finally {
    await c.stop();
  }
});

test('maxConnections counts the connections of every worker', async () => {
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 3 }
`,
  });
  const open: SmtpTestClient[] = [];
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    for (let i = 0; i < 3; i++) {
      const client = await SmtpTestClient.connect(c.port('in'), { localAddress: `127.0.0.${2 + i}` });
      open.push(client);
      assert.equal((await client.read(30_000)).code, 220);
    }
    // Two on one worker, one on the other: a fourth from yet another address is over the listener's limit.
    const fourth = await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.9' });
    open.push(fourth);
    assert.match((await fourth.read(30_000)).text, /^421 4\.7\.0 \S+ Too many connected clients/);
    open.pop()!.destroy();
    await open.shift()!.quit();
    await c.waitFor('a place again', async () => {
      const client = await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.9' });
      const r = await client.read(30_000);
      if (r.code === 220) open.push(client); else client.destroy();
      return r.code === 220;
    });
  } finally {
    for (const o of open) o.destroy();
    await c.stop();
  }
});

test('maxConnections held by one address: a worker closes one of that address\'s idle connections for another address', async () => {
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 4, maxConnectionsPerIp: 4 }
`,
  });
  const open: SmtpTestClient[] = [];
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    for (let i = 0; i < 4; i++) {
      const client = await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.2' });
      open.push(client);
      assert.equal((await client.read(30_000)).code, 220);
      assert.equal((await client.command('EHLO holder.example', 30_000)).code, 250);
    }
    // Two on each worker, all of 127.0.0.2: another address is greeted, and the worker it went to closed one of them.
    const other = await SmtpTestClient.connect(c.port('in'), { localAddress: '127.0.0.3' });
    assert.equal((await other.read(30_000)).code, 220, other.transcript.join('\n'));
    await c.waitFor('one of 127.0.0.2 closed', () => open.filter((o) => o.closed).length === 1);
    const closed = open.find((o) => o.closed)!;
    assert.match((await closed.repliesUntilClosed()).at(-1)!.text, /^421 4\.7\.0 \S+ Too many connected clients, this idle connection is closed for another client$/);
    open.push(other);
  } finally {
    for (const o of open) o.destroy();
    await c.stop();
  }
});

test('maxConnections counts the connections of every worker on a proxyProtocol listener too', async () => {
  const c = await startCluster({
    config: `
workers: 2
listeners:
  - name: lb
    listen: 127.0.0.1:{PORT:lb}
    reverseDns: false
    proxyProtocol: { trusted: [127.0.0.0/8] }
    limits: { greetingDelayMs: 0, maxConnections: 3 }
`,
  });
  const open: SmtpTestClient[] = [];
  /** A connection through the balancer (127.0.0.1) for client 192.0.2.<n>: each its own address, so no per-IP limit. */
  const proxied = (n: number): Promise<SmtpTestClient> => SmtpTestClient.connect(c.port('lb'), { proxyHeader: proxyV1(`192.0.2.${n}`, 40_000 + n) });
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
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
    await c.stop();
  }
});

test('STARTTLS sessions give their slot back (STARTTLS drops the raw socket\'s listeners): many more sessions than the limit, one after another', async () => {
  const pki = await makeTestPki();
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 2 }
`,
  });
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
    const ca = await readFile(pki.ca.cert, 'utf8');
    /** A new connection once one gets a slot (a closed one's slot comes back through the supervisor). */
    const admitted = (): Promise<SmtpTestClient> => c.waitFor('a slot', async () => {
      const client = await SmtpTestClient.connect(c.port('in'));
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
  } finally {
    await c.stop();
  }
});

test('authFailuresPerIp counts the failures on every worker; the MX without AUTH still takes the address\'s mail', async () => {
  const c = await startCluster({
    config: `
workers: 2
workerChoice: roundRobin
users: ./users
localDomains: [example.test]
listeners:
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
  try {
    await workerPid(c, 0);
    await workerPid(c, 1);
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
  } finally {
    await c.stop();
  }
});

// Three more lines a reload (or every process) said again, after setup warnings were made to be said once for the
// server (setup-warnings.ts):
// - the queue runner read the outbound certificates and CAs again after each reload, and logged what it found
//   (`outbound TLS material: … is not a CA certificate`) every time, on top of the same finding that the build says
//   once (at the configuration's line);
// - the Redis eviction-policy warning was said once per process: under `postern serve` by the queue process and by
//   every worker (3 lines with 2 workers);
// - a single process said `configuration change needs a restart: …` at every successful reload after such a change
//   (a SIGHUP for an unrelated edit, a pki change, a renewal), where postern serve's supervisor says it once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { makeTestPki } from '../helpers/pki.ts';
import { startTestServer } from '../helpers/postern.ts';
import { startCluster } from '../helpers/cluster.ts';
import { needsRedis, startRedis } from '../helpers/redis-server.ts';

test('a single process: an outbound CA file\'s finding is said once, not again at each reload', async () => {
  const pki = await makeTestPki();
  const s = await startTestServer({
    config: `localDomains: [example.com]
listeners:
  - { name: mx, listen: "127.0.0.1:0", reverseDns: false }
delivery:
  enabled: true
  route: { smarthost: { host: 127.0.0.1, port: 9 } }
  tls: { mode: none }
  caFiles: { partner: ${JSON.stringify(pki.server.cert)} }
`,
  });
  try {
    const notCa = (l: Record<string, unknown>): boolean => String(l.msg).includes(`${pki.server.cert}`) && String(l.msg).includes('is not a CA certificate');
    for (let i = 0; i < 3; i++) {
      const serial = s.runtime.generation.serial;
      assert.equal((await s.reloader.reload('SIGHUP')).ok, true);
      assert.notEqual(s.runtime.generation.serial, serial);
      // The runner reads the files of a new generation at its scan.
      await s.queue!.scan();
      await s.queue!.materialRead;
    }
    assert.equal(s.logs.filter(notCa).length, 1, JSON.stringify(s.logs.filter(notCa).map((l) => l.msg)));
  } finally {
    await s.stop();
  }
});

test('a single process: a change that needs a restart is said once, not again at each later reload', async () => {
  const s = await startTestServer({ config: `localDomains: [example.com]
store: { maxKeys: 1000 }
listeners:
  - { name: mx, listen: "127.0.0.1:0", reverseDns: false }
` });
  try {
    const config = join(s.dir, 'postern.yaml');
    await writeFile(config, (await readFile(config, 'utf8')).replace('maxKeys: 1000', 'maxKeys: 2000'));
    const needs = (l: Record<string, unknown>): boolean => l.level === 40 && String(l.msg).startsWith('configuration change needs a restart');
    assert.deepEqual((await s.reloader.reload('SIGHUP')).pendingRestart, ['store.maxKeys 1000 → 2000']);
    assert.equal(s.logs.filter(needs).length, 1);
    for (let i = 0; i < 2; i++) assert.equal((await s.reloader.reload('SIGHUP')).ok, true);
    assert.equal(s.logs.filter(needs).length, 1, JSON.stringify(s.logs.filter(needs).map((l) => l.msg)));
    await writeFile(config, (await readFile(config, 'utf8')).replace('maxKeys: 2000', 'maxKeys: 3000'));
    assert.equal((await s.reloader.reload('SIGHUP')).ok, true);
    assert.equal(s.logs.filter(needs).length, 2, 'a new change is said');
  } finally {
    await s.stop();
  }
});

test('postern serve with two workers: the Redis eviction-policy warning is said once for the server', needsRedis(), async () => {
  const redis = await startRedis();
  try {
    const cli = (...args: string[]) => promisify(execFile)('redis-cli', ['-p', String(redis.port), ...args]);
    await cli('CONFIG', 'SET', 'maxmemory', '512mb');
    await cli('CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru');
    const c = await startCluster({
      config: `
workers: 2
store: { redis: { url: ${JSON.stringify(redis.url)} } }
listeners:
  - { name: mx, listen: "127.0.0.1:{PORT:mx}", reverseDns: false }
`,
    });
    try {
      const evicts = (l: Record<string, unknown>): boolean => /store: Redis evicts keys when full/.test(String(l.msg));
      await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
      await c.waitFor('the warning', () => c.logs.some(evicts));
      // Every process connected to Redis by the time it is ready, and checks at its first answer: the queue process's
      // store is asked by the supervisor's status too. Wait for each process's first store answer: its ready line.
      await c.waitFor('each worker served a connection through the store', async () => {
        const { SmtpTestClient } = await import('../helpers/smtp-client.ts');
        for (let i = 0; i < 4; i++) {
          const client = await SmtpTestClient.connect(c.port('mx'));
          await client.read();
          client.socket.destroy();
        }
        return true;
      });
      assert.equal(c.logs.filter(evicts).length, 1, JSON.stringify(c.logs.filter(evicts).map((l) => l.pid)));
    } finally {
      await c.stop();
    }
  } finally {
    await redis.stop();
  }
});

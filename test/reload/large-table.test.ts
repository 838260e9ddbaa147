// A large lookup table (a million lines: some seconds of parsing) reloaded under `postern serve`: every process
// reads it on the event loop that serves its sessions. The sessions must go on meanwhile, and no watchdog may take
// the busy loop for a hung script: before, every worker and the queue process were killed at once, with every
// connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, greeted, ONE_WORKER, TWO_WORKERS } from '../helpers/cluster.ts';

const ENTRIES = 1_000_000;

test('a million-line table reloaded under postern serve: a transaction open meanwhile completes, no process is replaced', { timeout: 300_000 }, async () => {
  const c = await startCluster({ config: `${TWO_WORKERS}tables:\n  senders: ./senders\n`, files: { senders: 'a@example.test a\n' } });
  const restarts = async (): Promise<number> => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);
  try {
    const first = await c.waitFor('every process on the small table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 3 && r.converged && r;
    });
    const digest = Object.values(first.processes)[0]!.digest;
    const client = await greeted(c);
    assert.equal((await client.command('MAIL FROM:<sender@example.test>')).code, 250);
    assert.equal((await client.command('RCPT TO:<someone@example.test>')).code, 250);

    const lines: string[] = [];
    for (let i = 0; i < ENTRIES; i++) lines.push(`user${i}@example.test user${i}`);
    await writeFile(join(c.dir, 'senders.new'), `${lines.join('\n')}\n`);
    await rename(join(c.dir, 'senders.new'), join(c.dir, 'senders'));
    await c.waitFor('every process on the large table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 3 && Object.values(r.processes).every((p) => p.digest !== digest && p.lastError === null);
    }, 240_000);

    assert.equal((await client.command('DATA')).code, 354, 'the session lived through the reload');
    client.write('Subject: during a reload\r\n\r\nhello\r\n.');
    const end = await client.read();
    assert.equal(end.code, 250, end.text);
    assert.equal(await restarts(), 0, 'no process was replaced');
    assert.ok(!c.logs.some((l) => /hung/.test(String(l.msg))), 'no hang reported');
    client.destroy();
  } finally {
    await c.stop();
  }
});

test('a YAML table of 8,000 entries reloaded under postern serve: no process is taken for hung', { timeout: 300_000 }, async () => {
  const c = await startCluster({ config: `${ONE_WORKER}tables:\n  senders: { file: ./senders.yaml, format: yaml }\n`, files: { 'senders.yaml': 'a@example.test: a\n' } });
  try {
    const first = await c.waitFor('every process on the small table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 2 && r.converged && r;
    });
    const digest = Object.values(first.processes)[0]!.digest;
    const client = await greeted(c);
    // Before: the yaml package compared each key with every one before it (8,000 entries: seconds on the event loop).
    const lines: string[] = [];
    for (let i = 0; i < 8000; i++) lines.push(`user${i}@example.test: user${i}`);
    await writeFile(join(c.dir, 'senders.new'), `${lines.join('\n')}\n`);
    await rename(join(c.dir, 'senders.new'), join(c.dir, 'senders.yaml'));
    await c.waitFor('every process on the large table', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 2 && Object.values(r.processes).every((p) => p.digest !== digest && p.lastError === null);
    }, 240_000);
    assert.equal((await client.command('MAIL FROM:<sender@example.test>')).code, 250, 'the session lived through the reload');
    assert.equal((await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0), 0, 'no process was replaced');
    client.destroy();
  } finally {
    await c.stop();
  }
});

/**
 * The supervisor dies (kill -9) and a service manager starts a new one at once, while a worker of the old
 * one still finishes a session it had: the old worker's journal must not be opened by a new worker meanwhile
 * (a new writer deletes segments it takes for finished and cleans up what it takes for a crash's leftovers,
 * under the feet of the old one: a message the old worker then acknowledged was lost), and two queue
 * processes must not deliver the same spool at once. And a worker stopping (SIGTERM, or its supervisor gone)
 * lets a transaction in progress finish: it used to end at once, cutting a client mid-DATA, and a heartbeat
 * sent to a supervisor already dead crashed it (EPIPE as an unhandled 'error' event).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { join } from 'node:path';
import { startSink } from '../helpers/sink.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { startCluster, workerPid, spooled, ONE_WORKER, deliveryToSink } from '../helpers/cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

/** A client of `port` in the middle of DATA: envelope accepted, the message's first lines sent, not its end. */
async function inMiddleOfData(port: number, subject: string): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(port);
  await client.read(30_000);
  await client.command('EHLO client.test', 30_000);
  assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
  assert.equal((await client.command('RCPT TO:<b@example.test>', 30_000)).code, 250);
  assert.equal((await client.command('DATA', 30_000)).code, 354);
  client.write(`Subject: ${subject}`);
  client.write('');
  return client;
}

test('a supervisor killed and started again while its old worker finishes a session: the message that worker acknowledged is delivered', { timeout: 180_000 }, async () => {
  const sink = await startSink({});
  const c = await startCluster({
    config: `${ONE_WORKER}${deliveryToSink(sink.port)}`,
  });
  let second: ReturnType<typeof spawn> | null = null;
  const oldPids: number[] = [];
  try {
    const oldWorker = await workerPid(c, 0);
    oldPids.push(oldWorker, ...(await c.cluster()).processes.map((p) => p.pid!).filter(Boolean));
    // A first message, delivered: the worker's journal segment then holds nothing left to deliver.
    const first = await SmtpTestClient.connect(c.port('in'));
    await first.read(30_000);
    await first.command('EHLO client.test', 30_000);
    assert.equal((await first.sendMail('a@example.test', ['b@example.test'], 'Subject: first\r\n\r\none\r\n')).code, 250);
    await first.quit();
    await sink.waitFor(1, 60_000);
    await c.waitFor('the first message done', async () => (await spooled(c)).size === 0);

    // A session on the old worker, in the middle of DATA. The old worker is held still (SIGSTOP) until the
    // new server has started: then the end of the message reaches it.
    const client = await inMiddleOfData(c.port('in'), 'second');
    process.kill(oldWorker, 'SIGSTOP');
    c.proc.kill('SIGKILL');
    await new Promise((r) => c.proc.once('exit', r));
    let out = '';
    second = spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', join(c.dir, 'postern.yaml')], {
      cwd: c.dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1' },
    });
    second.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    second.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
    // The new server's worker 0 has started (and opened the spool), or waits for the old one.
    await until('a new worker 0 ready, or waiting', () => /"msg":"worker ready"|"msg":"waiting for process/.test(out), { timeoutMs: 60_000 })
      .catch((err: Error) => { throw new Error(`${err.message}; the new server wrote:\n${out}`); });
    const newWorkerStarted = /"msg":"worker ready"/.test(out);

    // The old worker goes on: the message is acknowledged, into the old worker's spool.
    client.write('two');
    client.write('.');
    process.kill(oldWorker, 'SIGCONT');
    const r = await client.read(30_000).catch((e) => { console.error(JSON.stringify(c.logs.slice(-15), null, 1), out); throw e; });
    assert.equal(r.code, 250, 'acknowledged by the old worker');
    await client.quit();
    // Acknowledged is delivered: by the new server, once the old worker has finished.
    await until('the acknowledged message delivered', () => sink.messages.some((m) => /Subject: second/.test(m.data.toString())), { timeoutMs: 90_000 });
    assert.equal(sink.messages.filter((m) => /Subject: second/.test(m.data.toString())).length, 1);
    assert.equal(newWorkerStarted, false, 'no new worker on the old one\'s spool while it lived');
    assert.match(out, new RegExp(`waiting for process ${oldWorker}, of an earlier server, to finish with its spool`), 'the new worker says what it waits for');
    await until('the new worker ready', () => /"msg":"worker ready"/.test(out), { timeoutMs: 60_000 });
  } finally {
    if (second && second.exitCode === null) {
      second.kill('SIGTERM');
      await new Promise((r) => second!.once('exit', r));
    }
    for (const pid of oldPids) try { process.kill(pid, 'SIGCONT'); process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await c.stop();
    await sink.close();
  }
});

test('SIGTERM while a client of a worker is in the middle of DATA: its transaction completes, then the server exits 0 with the message spooled', { timeout: 120_000 }, async () => {
  const c = await startCluster({
    config: ONE_WORKER,
  });
  try {
    await workerPid(c, 0);
    const client = await inMiddleOfData(c.port('in'), 'drained');
    const exited = new Promise<number | null>((r) => c.proc.once('exit', (code) => r(code)));
    c.proc.kill('SIGTERM');
    // The stop has reached the worker: new connections are no longer taken.
    await c.waitFor('the listener closed', () => new Promise<boolean>((resolve) => {
      const probe = net.connect(c.port('in'), '127.0.0.1');
      probe.once('connect', () => { probe.destroy(); resolve(false); });
      probe.once('error', () => resolve(true));
    }), 30_000).catch(() => undefined); // the supervisor may be gone already: exit is what follows
    client.write('body');
    client.write('.');
    const r = await client.read(30_000);
    assert.equal(r.code, 250, 'the transaction in progress completes');
    const id = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    await client.quit();
    assert.equal(await exited, 0);
    assert.ok((await spooled(c)).has(id), 'the acknowledged message is in the spool');
  } finally {
    await c.stop();
  }
});
